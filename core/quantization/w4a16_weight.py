"""One w4a16 weight layout that GPTQ and AWQ both load into, and its products.

Why one layout: the two formats differ only in how they pack (see ``w4a16_format``); once unpacked
they are integer codes, per-group zero points and scales. Rows are output features (as a dense
weight and a GGUF block matrix), so a kernel dequantizes one row at a time. Input columns are
reordered so that each group is one contiguous run (``perm``, GPTQ ``desc_act``); the activations
are gathered in the same order before the product, which leaves the result unchanged.

- ``codes``: uint8 [out, in / 2] two 4-bit codes a byte (column 2k in the low nibble), or uint8
  [out, in] for 8-bit;
- ``scales``, ``zeros``: float32 [out, groups] (zero points as floats: a GPTQ v1 zero of 2^bits does
  not fit the code width);
- ``group_starts``: int32 [groups + 1], the first (reordered) column of each group;
- ``perm``: int64 [in] or None, the checkpoint column of each reordered column.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pagedllm.kernels import cpu_w4a16
from pagedllm.quantization.gguf_weight import SMALL_BATCH  # rows up to which the row kernel beats dequantize + GEMM



@dataclass
class W4A16Weight:
    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    group_starts: torch.Tensor
    perm: torch.Tensor | None
    bits: int
    rows: int
    cols: int

    @classmethod
    def from_unpacked(cls, codes: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                      bits: int) -> "W4A16Weight":
        """From ``w4a16_format``'s common form: codes [out, in], zeros/scales [groups, out], g_idx [in]."""
        rows, cols = codes.shape
        groups = scales.shape[0]
        perm = None
        if cols > 1 and bool((g_idx[1:] < g_idx[:-1]).any()):  # desc_act: make each group contiguous
            perm = torch.argsort(g_idx, stable=True)
            codes, g_idx = codes[:, perm], g_idx[perm]
        counts = torch.bincount(g_idx, minlength=groups)
        starts = torch.zeros(groups + 1, dtype=torch.int32)
        starts[1:] = torch.cumsum(counts, 0)
        codes = codes.to(torch.uint8)
        if bits == 4:
            if cols % 2:
                codes = F.pad(codes, (0, 1))
            codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
        return cls(codes.contiguous(), scales.t().contiguous(), zeros.t().to(torch.float32).contiguous(), starts,
                   perm, bits, rows, cols)

    @property
    def groups(self) -> int:
        return self.scales.shape[1]

    def same_columns(self, other: "W4A16Weight") -> bool:
        """True when ``other``'s columns are grouped and ordered as ours, so their rows can be stacked."""
        same_perm = (self.perm is None) == (other.perm is None) and (
            self.perm is None or torch.equal(self.perm, other.perm))
        return (self.bits, self.cols) == (other.bits, other.cols) and same_perm and torch.equal(
            self.group_starts, other.group_starts)

    @classmethod
    def stack(cls, parts: list["W4A16Weight"]) -> "W4A16Weight":
        """Rows of several weights with the same columns (q|k|v, gate|up): one matrix, one product."""
        first = parts[0]
        return cls(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]),
                   torch.cat([p.zeros for p in parts]), first.group_starts, first.perm, first.bits,
                   sum(p.rows for p in parts), first.cols)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.codes, self.scales, self.zeros, self.group_starts, self.perm) if t is not None]

    def unpacked_codes(self) -> torch.Tensor:
        """uint8 [out, in] codes in the reordered column order."""
        if self.bits == 8:
            return self.codes
        both = torch.stack([self.codes & 15, self.codes >> 4], dim=-1)
        return both.view(self.rows, -1)[:, :self.cols]

    def dequantize(self, dtype: torch.dtype = torch.float32, checkpoint_order: bool = True) -> torch.Tensor:
        """The dense weight [out, in]; in the checkpoint's column order unless ``checkpoint_order=False``.

        Computed as ``(code - zero) * scale`` in float32: the integers are exact and the product is one
        rounding, the value a dense checkpoint of these weights holds."""
        counts = (self.group_starts[1:] - self.group_starts[:-1]).to(torch.int64)
        zeros = self.zeros.repeat_interleave(counts, dim=1)
        scales = self.scales.repeat_interleave(counts, dim=1)
        weight = (self.unpacked_codes().to(torch.float32) - zeros) * scales
        if checkpoint_order and self.perm is not None:
            weight = torch.empty_like(weight).index_copy_(1, self.perm, weight)
        return weight.to(dtype)

    def matmul(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x @ W.T`` for x [n, in], the activations reordered to the weight's columns first; ``out_dtype``: the
        dtype the caller will convert to, which the AMX kernel then writes itself.

        On CPU: up to ``SMALL_BATCH`` rows (decode) the C kernel multiplies row by row from the codes;
        more rows (prefill, batches) in bfloat16 on a CPU with AMX-BF16 multiply on AMX tiles from the codes
        (``cpu_w4a16.matmul_amx``, 32 weight rows dequantized at a time in L1), otherwise dequantize the layer
        once for this call and use torch's GEMM, which is faster there. Without the C kernel (or off CPU) the weight is dequantized in torch per call."""
        if self.perm is not None:
            x = x.index_select(-1, self.perm)
        if x.device.type == "cpu":
            if x.shape[0] <= SMALL_BATCH:
                out = cpu_w4a16.matmul(x, self)
                if out is not None:
                    return out
            elif x.dtype == torch.bfloat16 and cpu_w4a16.has_amx():  # a bf16 GEMM on AMX tiles, from the codes
                return cpu_w4a16.matmul_amx(x, self, out_dtype=torch.bfloat16 if out_dtype == torch.bfloat16
                                            else torch.float32)
            else:
                weight = cpu_w4a16.dequantize(self)
                if weight is not None:
                    return F.linear(x, weight.to(x.dtype))
        return F.linear(x, self.dequantize(x.dtype, checkpoint_order=False))
