"""Rotary position embeddings with a precomputed cos/sin table (default, linear, llama3, longrope)."""
from __future__ import annotations

import math

import torch

from pagedllm.kernels import cpu_ops
from pagedllm.models.layers.custom_op import CPU_KERNEL_DTYPES, CustomOp


def rope_parameters(config) -> dict:
    """Rope settings from a HF config, for transformers 4.x (rope_scaling) and 5.x (rope_parameters)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params or "rope_type" not in params and "type" not in params and "rope_theta" not in params:
        params = dict(getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    if params["rope_type"] == "su":  # Phi-3's first name for longrope
        params["rope_type"] = "longrope"
    if params["rope_type"] == "longrope":
        # As transformers: Phi-3 keeps the pre-training length on the config itself, and that wins;
        # `factor` defaults to the stretch max_position_embeddings / original_max_position_embeddings.
        original = (getattr(config, "original_max_position_embeddings", None)
                    or params.get("original_max_position_embeddings") or config.max_position_embeddings)
        params["original_max_position_embeddings"] = original
        if params.get("factor") is None:
            params["factor"] = config.max_position_embeddings / original
        if params.get("attention_factor") is None:
            factor = params["factor"]
            params["attention_factor"] = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return params


def _inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict) -> torch.Tensor:
    factor = p["factor"]
    low, high = p.get("low_freq_factor", 1.0), p.get("high_freq_factor", 4.0)
    old_len = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _longrope_inv_freq(rotary_dim: int, p: dict, max_position: int) -> torch.Tensor:
    """Phi-3 LongRoPE (``longrope``, formerly ``su``): one rescale factor per frequency.

    The long factors serve contexts past ``original_max_position_embeddings``, the short ones
    contexts within it. transformers picks per forward call (long once ``max(position) + 1``
    exceeds that length), so a request that crosses it while generating keeps the KV it computed
    with the short factors and continues with the long ones. vLLM picks once, at start-up, by
    ``max_model_len``, so cached keys never mix the two; so do we: ``max_position`` here is the
    engine's ``max_model_len``. Both agree whenever every forward pass of a request lies on one
    side of the boundary: prompts longer than it, or ``max_model_len`` within it. The cos/sin
    tables are scaled by ``attention_factor`` (default sqrt(1 + ln(factor) / ln(original))) on both.
    """
    use_long = max_position > p["original_max_position_embeddings"]
    factors = p["long_factor" if use_long else "short_factor"]
    if len(factors) != rotary_dim // 2:
        raise ValueError(f"rope longrope: {'long' if use_long else 'short'}_factor has {len(factors)} entries; "
                         f"the rotary dimension {rotary_dim} needs {rotary_dim // 2}")
    ext = torch.tensor(factors, dtype=torch.float32)
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim
    return 1.0 / (ext * float(p["rope_theta"]) ** exponent)


class RotaryEmbedding(CustomOp):
    """Rotary embedding of q and k from cos/sin tables made once; a ``CustomOp``: on CPU one C call
    that rotates in place, on CUDA the Triton kernel, else the torch ops (the oracle)."""

    def __init__(self, head_dim: int, rotary_dim: int, max_position: int, params: dict,
                 is_neox_style: bool = True):
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim
        self.is_neox_style = is_neox_style
        rope_type = params["rope_type"]
        inv_freq = _inv_freq(rotary_dim, float(params["rope_theta"]))
        scale = 1.0  # multiplies cos and sin (longrope's attention factor)
        if rope_type == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, params)
        elif rope_type == "linear":
            inv_freq = inv_freq / params["factor"]
        elif rope_type == "longrope":
            inv_freq, scale = _longrope_inv_freq(rotary_dim, params, max_position), params["attention_factor"]
        elif rope_type != "default":
            raise ValueError(f"rope_type={rope_type!r} is not supported yet (default, linear, llama3, longrope)")
        t = torch.arange(max_position, dtype=torch.int64).float()
        freqs = torch.outer(t, inv_freq)  # same float32 products as HF's matmul
        cos, sin = freqs.cos(), freqs.sin()
        if scale != 1.0:
            cos, sin = cos * scale, sin * scale
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin, persistent=False)

    def to_dtype(self, dtype: torch.dtype) -> None:
        self.cos_cache = self.cos_cache.to(dtype)
        self.sin_cache = self.sin_cache.to(dtype)
        if self.bound_to is not None:  # the tables a bound path reads follow
            self.bind_forward(self.bound_device, dtype)

    def _kernel_applies(self, kind: str, dtype: torch.dtype | None) -> bool:
        table = self.cos_cache.dtype
        if dtype not in (None, table):
            return False  # torch would promote q and k to the tables' dtype, the kernels keep theirs
        return table in CPU_KERNEL_DTYPES if kind == "cpu" else self.rotary_dim % 2 == 0

    def _prepare(self, choice: str) -> None:
        self._dtype = self.cos_cache.dtype
        # Triton's layout: one [max_position, rotary_dim] table, cos | sin
        self._cos_sin_table = torch.cat((self.cos_cache, self.sin_cache), -1).contiguous() if choice == "cuda" else None

    def _turn(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The torch rotation (named so as not to override ``nn.Module._apply``, which ``.to()`` runs)."""
        rot, rest = x[..., :self.rotary_dim], x[..., self.rotary_dim:]
        if self.is_neox_style:
            x1, x2 = rot.chunk(2, dim=-1)
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:  # GPT-J style: interleaved pairs
            x1, x2 = rot[..., ::2], rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        if rest.shape[-1]:
            out = torch.cat((out, rest), dim=-1)
        return out

    def _cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows of ``positions``; reused while the same positions tensor comes back
        (every layer of a step shares one instance, see ``get_rope``)."""
        if positions is not getattr(self, "_last_positions", None):
            self._last_positions = positions
            self._last_cos_sin = (self.cos_cache[positions].unsqueeze(1), self.sin_cache[positions].unsqueeze(1))
        return self._last_cos_sin

    def _rotate_native(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x [T, n, head_dim] rotated by the torch ops (x itself is left alone)."""
        cos, sin = self._cos_sin(positions)
        return self._turn(x, cos, sin)

    def _rotate_cpu(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x rotated in place by one C call (callers pass fresh projections, as with vLLM's in-place
        kernels). The call declines what only this input decides (a layout other than rows of
        heads, another dtype, positions past the table): the torch ops then, which raise for the last."""
        if cpu_ops.rotary_embedding_(x, positions, self.cos_cache, self.sin_cache, self.is_neox_style,
                                     lib=self._lib) is None:
            return self._rotate_native(positions, x)
        return x

    def forward_native(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q: [T, heads, head_dim], k: [T, kv_heads, head_dim]."""
        return _in_one_pass(positions, q, k, self._rotate_native)

    def forward_cpu(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        return _in_one_pass(positions, q, k, self._rotate_cpu)

    def forward_cuda(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """Both in one Triton launch each (new tensors). Positions are not checked against the
        table here (a device sync per call): the runner's never pass ``max_model_len``."""
        if q.dtype is not self._dtype or k.dtype is not self._dtype:
            return self.forward_native(positions, q, k)
        return self._fused.rotary(positions, q, k, self._cos_sin_table, self.head_dim, self.rotary_dim,
                                  self.is_neox_style)


def _in_one_pass(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, rotate):
    """``rotate`` q and k; when k's heads directly follow q's (both views of one fused QKV output,
    as in most models here) they turn in one pass."""
    both = _side_by_side(q, k)
    if both is not None:
        return rotate(positions, both).split([q.shape[1], k.shape[1]], dim=1)
    return rotate(positions, q), rotate(positions, k)


def _side_by_side(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """One [T, q_heads + k_heads, head_dim] view of q and k when, in every row, k's heads follow
    q's in memory (one call instead of two: on CPU each call costs more than its arithmetic)."""
    if (not cpu_ops.rows_of_heads(q) or k.dim() != 3 or q.dtype != k.dtype or q.device != k.device
            or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] or q.stride() != k.stride()
            or q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()):
        return None
    heads = q.shape[1] + k.shape[1]
    if k.storage_offset() != q.storage_offset() + q.shape[1] * q.shape[2] or (
            q.shape[0] > 1 and q.stride(0) < heads * q.shape[2]):
        return None
    return q.as_strided((q.shape[0], heads, q.shape[2]), q.stride())


_ROPE_CACHE: dict = {}


def get_rope(head_dim: int, rotary_dim: int, max_position: int, params: dict,
             is_neox_style: bool = True) -> RotaryEmbedding:
    """One shared RotaryEmbedding per configuration (vLLM's get_rope): layers reuse its tables."""
    key = (head_dim, rotary_dim, max_position, repr(sorted(params.items())), is_neox_style,
           torch.get_default_dtype(), str(torch.empty(0).device))
    if key not in _ROPE_CACHE:
        _ROPE_CACHE[key] = RotaryEmbedding(head_dim, rotary_dim, max_position, params, is_neox_style)
    return _ROPE_CACHE[key]


def partial_rotary_factor(config, legacy_attr: str | None = None) -> float:
    """Fraction of each head that is rotated: 5.x keeps it in rope_parameters, 4.x on the config."""
    value = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor")
    if value is None:
        value = getattr(config, "partial_rotary_factor", None)
    if value is None and legacy_attr:
        value = getattr(config, legacy_attr, None)
    return 1.0 if value is None else float(value)
