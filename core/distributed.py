"""Tensor-parallel rank and size. One worker for now; layers already shard by these."""
import torch.distributed as dist


def get_tp_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_tp_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def tp_all_reduce(x):
    if get_tp_world_size() > 1:
        dist.all_reduce(x)
    return x


def tp_all_gather_last_dim(x):
    size = get_tp_world_size()
    if size == 1:
        return x
    import torch

    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=-1)
