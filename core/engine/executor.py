"""The engine's one door to its workers (vLLM's executor): build them, size and allocate their KV
caches, run a step, shut them down.

``UniProcExecutor`` (``uni``, the default for one rank): the model runner lives in the engine's
process. ``MultiprocExecutor`` (``mp``, the default for tensor_parallel_size x pipeline_parallel_size > 1, in
``mp_executor``): rank 0 runs in the engine's process as the driver and ranks 1..N-1 in local
worker processes. ``RayExecutor`` (``ray``, in ``ray_executor``): the same, ranks 1..N-1 as Ray
actors in a placement group (this machine or a cluster). Either way the engine keeps the scheduler and the block manager and reads the
step's result (``SamplerOutput``) from the driver's runner.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm.worker.model_runner import ModelRunner
from pagedllm.worker.sampler_output import SamplerOutput


@dataclass
class RunnerSpec:
    """What every rank needs to build its model runner (sent to worker processes as is)."""

    hf_config: object
    model_path: str
    dtype: torch.dtype
    device: torch.device
    max_model_len: int
    block_size: int
    attention_backend: str | None
    model_impl: str
    trust_remote_code: bool = False  # workers read the config again from model_path: a remote-code class
    # (transformers_modules.*) is importable only where transformers loaded it, so it does not unpickle there
    gguf_file: str | None = None  # a GGUF file whose blocks load quantized (one rank only)
    w4a16: object = None  # a W4A16Config: the checkpoint's GPTQ/AWQ layers load packed (one rank only)
    fp8: object = None  # an Fp8Config: the decoder's linear layers run fp8 weights (quantized at load or stored)
    kv_cache_dtype: str = "auto"  # "fp8"/"fp8_e4m3": each rank's cache holds e4m3 codes and row scales
    pipeline_parallel_size: int = 1  # stages; the world is tensor_parallel_size x this
    pp_layer_partition: str | None = None  # VLLM_PP_LAYER_PARTITION as the driver sees it
    enforce_eager: bool = False  # True: no flat CPU decode plan on any rank (``ModelRunner.plan_cpu_decode``)


class WorkerDiedError(RuntimeError):
    """A worker (process or Ray actor) ended while the engine needed it; the engine's other workers are shut down."""


class Executor:
    world_size = 1
    driver_runner: ModelRunner

    def num_kv_blocks(self, driver_blocks: int, per_block: int, budget_bytes: int | None,
                      gpu_utilization: float, reserve: int) -> int:
        """Blocks every rank can hold: the minimum of what each fits (``driver_blocks`` for rank 0)."""
        return driver_blocks

    def allocate_kv_cache(self, num_blocks: int) -> None:
        self.driver_runner.allocate_kv_cache(num_blocks)

    def execute_model(self, scheduled) -> SamplerOutput:
        return self.driver_runner.execute(scheduled)

    def execute_pooling(self, scheduled, pooler):
        return self.driver_runner.execute_pooling(scheduled, pooler)

    def release(self, keys) -> None:
        self.driver_runner.release(keys)

    def stats(self) -> list[dict]:
        """Per rank (``rank_stats``): the driver's here; the workers answer theirs."""
        return [rank_stats(self.driver_runner)]

    def shutdown(self) -> None:
        pass


class UniProcExecutor(Executor):
    def __init__(self, spec: RunnerSpec, model_cls=None):
        self.driver_runner = ModelRunner(spec.hf_config, spec.model_path, spec.dtype, spec.device,
                                         spec.max_model_len, spec.block_size, spec.attention_backend,
                                         spec.model_impl, model_cls, gguf_file=spec.gguf_file,
                                         w4a16=spec.w4a16, fp8=spec.fp8,
                                         kv_cache_dtype=spec.kv_cache_dtype)


def rank_stats(runner: ModelRunner, param_bytes: int | None = None) -> dict:
    """One rank's figures: ``param_bytes`` (weights held; ``param_bytes`` when the caller counted them once),
    ``all_reduced_bytes`` and ``sent_bytes`` (since start), ``num_threads`` (torch threads) and ``cpu_decode``
    (whether decode steps take the flat CPU plan)."""
    from pagedllm import distributed

    return {"param_bytes": runner_param_bytes(runner) if param_bytes is None else param_bytes,
            "all_reduced_bytes": distributed.all_reduced_bytes, "sent_bytes": distributed.sent_bytes,
            "num_threads": torch.get_num_threads(), "cpu_decode": runner.cpu_decode is not None}


def runner_param_bytes(runner: ModelRunner) -> int:
    """Bytes of weights a runner holds (tied parameters once; CPU-packed weights included)."""
    seen = {id(p): p.numel() * p.element_size() for p in runner.model.parameters()}
    packed = sum(m.packed_weight.numel() * m.packed_weight.element_size()
                 for m in runner.model.modules() if getattr(m, "packed_weight", None) is not None)
    return sum(seen.values()) + packed


def make_executor(config, spec: RunnerSpec, model_cls=None) -> Executor:
    """``uni`` for one rank; for tensor_parallel_size x pipeline_parallel_size > 1 ``mp`` (local
    processes, the default) or ``ray`` (Ray actors)."""
    world_size = config.tensor_parallel_size * config.pipeline_parallel_size
    if world_size == 1:
        return UniProcExecutor(spec, model_cls)
    if config.distributed_executor_backend == "ray":
        from pagedllm.engine.ray_executor import RayExecutor

        return RayExecutor(spec, world_size, model_cls)
    from pagedllm.engine.mp_executor import MultiprocExecutor

    return MultiprocExecutor(spec, world_size, model_cls)
