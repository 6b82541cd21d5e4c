"""A tensor-parallel worker process: one rank's model shard and KV-cache shard.

The driver (rank 0, in the engine's process) keeps the scheduler, the block manager and the
sampler; it sends each step's flat batch here (``worker_protocol``) and every rank runs the same
forward, meeting in the layers' all-reduces. Only the driver samples: a worker computes its logits
shard (the LM head's all-gather needs every rank) and drops the result.

Started by ``MultiprocExecutor`` as ``python -P -c "from pagedllm.worker.worker import main; main()"``:
a fresh interpreter with no repository root on ``sys.path`` and no re-import of the user's script
(which multiprocessing's spawn would do). It connects back to the driver with the address and key
given in its environment, and exits when the driver says stop or its connection closes. A Ray
actor (``RayExecutor``) runs the same loop through ``connect_and_serve``.
"""
from __future__ import annotations

import datetime
import logging
import os
import sys
import traceback
from multiprocessing.connection import Client

import torch

from pagedllm import distributed
from pagedllm.models.pipeline import PARTITION_ENV
from pagedllm.worker.worker_protocol import recv, send

logger = logging.getLogger("pagedllm.worker")

ADDRESS_ENV, KEY_ENV, RANK_ENV = "PAGEDLLM_WORKER_ADDRESS", "PAGEDLLM_WORKER_AUTHKEY", "PAGEDLLM_WORKER_RANK"


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format=f"[rank {os.environ.get(RANK_ENV)}] %(levelname)s %(message)s")
    sys.exit(connect_and_serve(os.environ[ADDRESS_ENV], bytes.fromhex(os.environ[KEY_ENV]), int(os.environ[RANK_ENV])))


def connect_and_serve(address: str, key: bytes, rank: int) -> int:
    """Connect to the driver at ``address`` ("host:port"), build this rank's runner from the spec it
    sends, answer until it says stop or goes away. Returns the exit code: 1 when the start failed."""
    host, port = address.rsplit(":", 1)
    conn = Client((host, int(port)), authkey=key)
    try:
        send(conn, ("hello", rank, os.getpid()))
        try:
            worker = Worker(conn, recv(conn))
        except Exception:  # noqa: BLE001 - tell the driver why, then exit
            send(conn, ("error", traceback.format_exc()))
            return 1
        worker.serve()
        return 0
    finally:
        conn.close()


class Worker:
    def __init__(self, conn, spec: dict):
        from pagedllm.worker.model_runner import ModelRunner

        self.conn = conn
        self.rank = spec["rank"]
        torch.set_num_threads(spec["num_threads"])
        device = spec["device"]
        if device.type == "cuda":  # mp: the rank's device; a Ray actor sees only the one Ray gave it
            device = torch.device("cuda", spec.get("device_index", self.rank))
            torch.cuda.set_device(device)
        self.device = device
        store = torch.distributed.TCPStore(spec["store_host"], spec["store_port"], spec["world_size"],
                                           is_master=False, timeout=datetime.timedelta(seconds=120))
        if spec.get("pp_layer_partition"):  # the driver's VLLM_PP_LAYER_PARTITION (a Ray actor may not inherit it)
            os.environ[PARTITION_ENV] = spec["pp_layer_partition"]
        distributed.init_tensor_parallel(self.rank, spec["world_size"], store, spec["backend"],
                                         pipeline_parallel_size=spec["pipeline_parallel_size"])
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(spec["model_path"], trust_remote_code=spec["trust_remote_code"])
        self.runner = ModelRunner(hf_config, spec["model_path"], spec["dtype"], device,
                                  spec["max_model_len"], spec["block_size"], spec["attention_backend"],
                                  spec["model_impl"], fp8=spec.get("fp8"),
                                  kv_cache_dtype=spec["kv_cache_dtype"])
        self.hidden: torch.Tensor | None = None
        self.enforce_eager = spec.get("enforce_eager", False)
        from pagedllm.engine.executor import runner_param_bytes

        self.param_bytes = runner_param_bytes(self.runner)  # the shard's weights do not change
        send(conn, ("ready",))

    def serve(self) -> None:
        """Answer the driver until it says stop or goes away (EOF: the driver died)."""
        try:
            while True:
                message = recv(self.conn)
                kind = message[0]
                if kind == "forward":
                    self.forward(*message[1:])
                elif kind == "logits":
                    self.logits(message[1])
                elif kind == "pipeline":
                    self.pipeline(message[1])
                elif kind == "num_blocks":
                    send(self.conn, ("num_blocks", self.num_blocks(*message[1:])))
                elif kind == "allocate":
                    self.runner.allocate_kv_cache(message[1])
                    if not self.enforce_eager:  # the flat decode reads the caches' addresses: planned after them
                        self.runner.plan_cpu_decode()
                    send(self.conn, ("allocated",))
                elif kind == "stats":
                    from pagedllm.engine.executor import rank_stats

                    send(self.conn, ("stats", rank_stats(self.runner, self.param_bytes)))
                elif kind == "stop":
                    break
                else:
                    raise ValueError(f"unknown message {kind!r}")
        except (EOFError, ConnectionError):
            pass  # the driver is gone: nothing to answer
        finally:
            distributed.destroy_tensor_parallel()

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata) -> None:
        input_ids, positions, metadata = (to_device(x, self.device) for x in (input_ids, positions, metadata))
        self.runner.backend_cls.prepare(metadata)
        self.hidden = self.runner.forward(input_ids, positions, metadata)  # the flat plan or not, as the driver

    @torch.inference_mode()
    def pipeline(self, microbatches: list) -> None:
        """This rank's stage of a pipelined step (``pipeline_stage``)."""
        from pagedllm.worker.pipeline_stage import run_stage

        for mb in microbatches:
            mb.input_ids, mb.positions, mb.metadata = (to_device(x, self.device)
                                                       for x in (mb.input_ids, mb.positions, mb.metadata))
            self.runner.backend_cls.prepare(mb.metadata)
        run_stage(self.runner, microbatches)

    @torch.inference_mode()
    def logits(self, rows) -> None:
        """Rows of this step's hidden states (an index tensor, or hidden rows themselves): the LM
        head's gather needs this rank's shard; the driver keeps the result."""
        hidden = self.hidden[rows.to(self.device)] if not rows.is_floating_point() else rows.to(self.device)
        self.runner.model.compute_logits(hidden)

    def num_blocks(self, per_block: int, budget_bytes: int | None, gpu_utilization: float, reserve: int) -> int:
        """How many KV blocks fit on this rank: the driver allocates the minimum over ranks. A block's bytes
        here are the driver's scaled to this rank's layers (pipeline stages may hold different numbers)."""
        from pagedllm.worker.cache_engine import bytes_per_block

        layers, kv_heads, head_dim = self.runner.kv_shape
        per_block = bytes_per_block(layers, self.runner.block_size, kv_heads, head_dim, self.runner.dtype)
        if budget_bytes is None and self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget_bytes = int(total * gpu_utilization - (total - free) - reserve)
        return max(int((budget_bytes or 0) // per_block), 0)


def to_device(value, device: torch.device):
    """A tensor, or a dataclass of tensors (the step's attention metadata), on this rank's device."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if device.type == "cpu":
        return value
    for name in value.__slots__:
        field = getattr(value, name)
        if isinstance(field, torch.Tensor):
            setattr(value, name, field.to(device))
    return value


if __name__ == "__main__":
    main()
