"""Unpacking GPTQ and AWQ tensors (Hugging Face layout) into integer codes and zero points.

Why: both formats store 4-bit (GPTQ also 8-bit) integers packed into int32, least significant bits
first, but along different dimensions and in a different order, so each is turned into one common
form here, once at load: ``codes`` [out, in] and ``zeros``/``scales`` [groups, out]; a weight is
``(codes[o, i] - zeros[g(i), o]) * scales[g(i), o]`` with ``g`` the input column's group.

- GPTQ: ``qweight`` int32 [in / pack, out], packed along the *input* dimension (input row
  ``pack * r + j`` in bits ``bits * j ...`` of row ``r``); ``qzeros`` int32 [groups, out / pack],
  packed along the output dimension; ``scales`` [groups, out]; ``g_idx`` int32 [in], each input
  column's group (not monotonic with ``desc_act``). v1 checkpoints (``checkpoint_format: gptq``,
  AutoGPTQ's) store each zero point minus one.
- AWQ (GEMM version): ``qweight`` int32 [in, out / 8] and ``qzeros`` int32 [groups, out / 8], both
  packed along the *output* dimension in AutoAWQ's interleaved order: bits ``4 * p`` hold output
  column ``AWQ_ORDER[p]`` of the eight; zero points are stored as they are; the group of input
  column ``i`` is ``i // group_size``.
"""
from __future__ import annotations

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # bit slot p holds column AWQ_ORDER[p] of its eight
AWQ_SLOT_OF_COLUMN = tuple(AWQ_ORDER.index(c) for c in range(8))  # (0, 4, 1, 5, 2, 6, 3, 7)


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """int32 values, ``32 // bits`` per element, least significant first, spread along ``dim`` (0 or 1)."""
    if packed.dtype != torch.int32 or packed.dim() != 2:
        raise ValueError(f"packed tensor must be int32 [rows, cols], got {packed.dtype} {list(packed.shape)}")
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = (1 << bits) - 1
    if dim == 0:  # [r, c] -> [r, slots, c] -> [r * slots, c]
        values = (packed.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask
        return values.reshape(-1, packed.shape[1])
    values = (packed.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask  # [r, c, slots] -> [r, c * slots]
    return values.reshape(packed.shape[0], -1)


def _check(name: str, tensor: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{what} {name} is {list(tensor.shape)}; expected {list(shape)}")


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
                bits: int, group_size: int, zero_offset: int, what: str = "GPTQ layer"):
    """(codes [out, in] int32, zeros [groups, out] int32, scales [groups, out] float32, g_idx [in] int64)."""
    pack = 32 // bits
    in_features, out_features = qweight.shape[0] * pack, qweight.shape[1]
    groups = scales.shape[0]
    _check("scales", scales, (groups, out_features), what)
    _check("qzeros", qzeros, (groups, out_features // pack), what)
    if out_features % pack:
        raise ValueError(f"{what}: {out_features} output features do not fill whole int32 zero points")
    codes = unpack_int32(qweight, bits, dim=0).t()
    zeros = unpack_int32(qzeros, bits, dim=1) + zero_offset
    if g_idx is None:
        g_idx = torch.arange(in_features) // (in_features if group_size == -1 else group_size)
    _check("g_idx", g_idx, (in_features,), what)
    g_idx = g_idx.to(torch.int64)
    if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= groups):
        raise ValueError(f"{what}: g_idx holds groups {int(g_idx.min())}..{int(g_idx.max())}, the scales have {groups}")
    return codes, zeros, scales.to(torch.float32), g_idx


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
               what: str = "AWQ layer"):
    """(codes [out, in] int32, zeros [groups, out] int32, scales [groups, out] float32, g_idx [in] int64)."""
    in_features, out_features = qweight.shape[0], qweight.shape[1] * 8
    groups = scales.shape[0]
    _check("scales", scales, (groups, out_features), what)
    _check("qzeros", qzeros, (groups, out_features // 8), what)
    slots = torch.tensor(AWQ_SLOT_OF_COLUMN)

    def columns(packed):  # undo the interleave within each run of eight columns
        values = unpack_int32(packed, 4, dim=1)
        return values.view(values.shape[0], -1, 8)[:, :, slots].reshape(values.shape[0], -1)

    group = in_features if group_size == -1 else group_size
    g_idx = torch.arange(in_features) // group
    if groups != -(-in_features // group):
        raise ValueError(f"{what}: {groups} scale rows for {in_features} input features in groups of {group}")
    return columns(qweight).t(), columns(qzeros), scales.to(torch.float32), g_idx
