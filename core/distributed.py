"""Tensor- and pipeline-parallel ranks, sizes and collectives, over torch.distributed.

World = TP x PP ranks, laid out as vLLM's: ``rank = pp_rank * tp + tp_rank`` (a stage's TP ranks
are consecutive; the driver, rank 0, is TP rank 0 of the first stage). Layers read
``get_tp_rank``/``get_tp_world_size`` when they are built and shard by them; their forwards call
``tp_all_reduce``/``tp_all_gather_last_dim`` within their stage's TP group (the default process
group when there is one stage). Models read ``get_pp_rank``/``get_pp_world_size`` to build only
their stage's layers. Set up once per process by ``init_tensor_parallel`` (a worker, or the driver
as rank 0) and torn down by ``destroy_tensor_parallel``; with none, everything is rank 0 of 1 and
no collective runs. ``all_reduced_bytes`` counts the bytes this rank all-reduced and ``sent_bytes``
the activations it sent to the next stage (benchmarks report both per step). CPU ranks of one TP group on
one machine all-reduce through shared memory (``shm_all_reduce``; ``PAGEDLLM_TP_SHM=0`` keeps gloo).
"""
from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from pagedllm import shm_all_reduce

logger = logging.getLogger(__name__)

all_reduced_bytes = 0  # bytes this rank has passed to all_reduce since the group was made
sent_bytes = 0  # activation bytes this rank has sent to the next pipeline stage since then
_pp_size = 1  # pipeline stages in this process's group (1: tensor parallelism only, or none)
_tp_group = None  # this rank's stage's TP group when there are several stages (else the default group)
_shm: shm_all_reduce.ShmAllReduce | None = None  # local CPU ranks of one TP group: all-reduce in shared memory


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_rank() -> int:
    return dist.get_rank() if _initialized() else 0


def get_tp_world_size() -> int:
    return dist.get_world_size() // _pp_size if _initialized() else 1


def get_tp_rank() -> int:
    return get_world_rank() % get_tp_world_size()


def get_pp_world_size() -> int:
    return _pp_size if _initialized() else 1


def get_pp_rank() -> int:
    return get_world_rank() // get_tp_world_size()


def init_tensor_parallel(rank: int, world_size: int, store: "dist.Store", backend: str,
                         timeout_s: float = 120.0, pipeline_parallel_size: int = 1) -> None:
    """Join the ranks' group through ``store`` (a TCPStore the driver hosts), then, with several
    pipeline stages, every stage's TP group (each rank makes all of them, in the same order, as
    torch.distributed requires). The timeout bounds a collective whose peer is gone without closing
    its sockets; a dead process is seen sooner."""
    global all_reduced_bytes, sent_bytes, _pp_size, _tp_group, _shm
    if dist.is_initialized():
        raise RuntimeError("a tensor-parallel group exists in this process already: one engine with "
                           "tensor_parallel_size x pipeline_parallel_size > 1 per process; shut the other down first")
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    all_reduced_bytes = sent_bytes = 0
    _pp_size, _tp_group = pipeline_parallel_size, None
    if pipeline_parallel_size > 1:
        tp = world_size // pipeline_parallel_size
        for stage in range(pipeline_parallel_size):
            group = dist.new_group(list(range(stage * tp, (stage + 1) * tp)))
            if stage == rank // tp:
                _tp_group = group
    _shm = _shared_memory_all_reduce(rank, world_size, store, backend, pipeline_parallel_size, timeout_s)


def _shared_memory_all_reduce(rank: int, world_size: int, store, backend: str, pipeline_parallel_size: int,
                              timeout_s: float) -> shm_all_reduce.ShmAllReduce | None:
    """The shared buffer of the ranks when they are gloo ranks of one TP group on one x86 machine, else None
    (every rank decides alike: rank 0 publishes the buffer's path, or an empty one)."""
    if (backend != "gloo" or pipeline_parallel_size != 1 or world_size == 1 or not shm_all_reduce.supported()
            or os.environ.get("PAGEDLLM_TP_SHM", "1") == "0"):
        return None
    store.set(f"pagedllm/shm/rank{rank}", f"{shm_all_reduce.machine_id()}|{os.getpid()}")
    ranks = [store.get(f"pagedllm/shm/rank{r}").decode().rsplit("|", 1) for r in range(world_size)]
    if rank == 0:
        path = ""
        if len({machine for machine, _ in ranks}) == 1:
            try:
                path = shm_all_reduce.ShmAllReduce.create_file(world_size)
            except OSError as exc:
                logger.warning("tensor-parallel all-reduces take gloo: no shared-memory buffer (%s)", exc)
        store.set("pagedllm/shm/path", path)
    path = store.get("pagedllm/shm/path").decode()
    if not path:
        return None
    shm = shm_all_reduce.ShmAllReduce(rank, world_size, path, [int(pid) for _, pid in ranks], timeout_s)
    dist.barrier()  # every rank has mapped it: the name can go (the mappings stay)
    if rank == 0:
        os.unlink(path)
    return shm


def destroy_tensor_parallel() -> None:
    global _pp_size, _tp_group, _shm
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _pp_size, _tp_group, _shm = 1, None, None


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    global all_reduced_bytes
    if get_tp_world_size() > 1:
        all_reduced_bytes += x.numel() * x.element_size()
        if _shm is not None and _shm.takes(x):
            return _shm.all_reduce(x)
        dist.all_reduce(x, group=_tp_group)
    return x


def tp_all_gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    size = get_tp_world_size()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=_tp_group)
    return torch.cat(parts, dim=-1)


def pp_send(x: torch.Tensor, to_rank: int, tag: int):
    """Start sending ``x`` to ``to_rank`` (the same TP rank of the next stage, or the driver); returns
    the work handle to wait on. ``x`` must stay alive until then."""
    global sent_bytes
    sent_bytes += x.numel() * x.element_size()
    return dist.isend(x.contiguous(), to_rank, tag=tag)


def pp_recv(shape, dtype: torch.dtype, device: torch.device, from_rank: int, tag: int) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(out, from_rank, tag=tag)
    return out


def check_tensor_parallel(hf_config, tp: int) -> None:
    """Refuse, before any process starts, a model whose heads do not split over ``tp`` ranks
    (vLLM's rules): query heads must divide, KV heads must divide or be divided (replicated). The
    message names both head counts and the sizes that do split them."""
    if tp == 1:
        return
    cfg = getattr(hf_config, "text_config", None) or hf_config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    if heads is None:
        return
    kv = _num_kv_heads(cfg, heads)
    sizes = ", ".join(str(t) for t in tensor_parallel_sizes(heads, kv))
    if heads % tp:
        raise ValueError(f"tensor_parallel_size={tp} does not divide the model's num_attention_heads={heads} "
                         f"(num_key_value_heads={kv}); use a tensor_parallel_size that divides {heads} and splits "
                         f"its KV heads: one of {sizes}")
    if kv % tp and tp % kv:
        raise ValueError(f"tensor_parallel_size={tp} and the model's num_key_value_heads={kv}: one must divide "
                         "the other (KV heads are split across ranks, or replicated when fewer than the ranks); "
                         f"with num_attention_heads={heads}, use one of {sizes}")


def tensor_parallel_sizes(heads: int, kv_heads: int) -> list[int]:
    """Every tensor_parallel_size that splits ``heads`` query heads and ``kv_heads`` KV heads."""
    return [t for t in range(1, heads + 1) if heads % t == 0 and (kv_heads % t == 0 or t % kv_heads == 0)]


def _num_kv_heads(cfg, heads: int) -> int:
    """KV heads under each family's name: Falcon (new architecture, or multi-query), ChatGLM, the rest."""
    if getattr(cfg, "new_decoder_architecture", False):
        return getattr(cfg, "num_kv_heads", None) or heads
    if getattr(cfg, "multi_query", False):
        return 1
    if getattr(cfg, "multi_query_attention", False):
        return cfg.multi_query_group_num
    return getattr(cfg, "num_key_value_heads", None) or heads
