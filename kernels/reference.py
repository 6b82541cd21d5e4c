"""Plain-torch twins of the Triton kernels: the CPU path and the tests' oracle.

Vectorised (no Python loop over tokens or blocks) and written for clarity, not speed. Each
function computes in float32 (float64 when given float64 inputs, which is how the tests use
them as the oracle) and returns the input dtype.

Conventions shared with the kernels:

* KV cache of one layer: ``[num_blocks, block_size, num_kv_heads, head_dim]``; token ``t`` of a
  sequence is in slot ``block_table[t // block_size] * block_size + t % block_size``.
* Query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)`` (GQA/MQA).
* A query at absolute position ``p`` sees keys ``0..p``; with ``sliding_window=W`` only the last
  ``W`` of them (keys ``j`` with ``p - j < W``, as in HF transformers and vLLM).
* ``soft_cap=c`` maps scaled scores ``s`` to ``c * tanh(s / c)`` before the softmax (Gemma 2).
"""
from __future__ import annotations

import torch


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write each token's K/V ``[T, num_kv_heads, head_dim]`` into its cache slot; -1 skips.

    An fp8 cache (uint8) gets each row quantized with its own scale (``kv_fp8.quantize``)."""
    keep = slot_mapping >= 0
    if k_cache.dtype == torch.uint8:
        from pagedllm.kernels import kv_fp8

        k, v = kv_fp8.quantize(k), kv_fp8.quantize(v)
    slots = slot_mapping[keep].long()
    block_size = k_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    k_cache[blocks, offsets] = k[keep].to(k_cache.dtype)
    v_cache[blocks, offsets] = v[keep].to(v_cache.dtype)


def _gather_context(cache: torch.Tensor, block_tables: torch.Tensor, max_len: int) -> torch.Tensor:
    """``[num_seqs, max_len, num_kv_heads, head_dim]``: each sequence's first ``max_len`` tokens.

    Positions past a sequence's length read whatever its block table points at; callers mask them.
    """
    block_size = cache.shape[1]
    pos = torch.arange(max_len, device=cache.device)
    num_blocks = -(-max_len // block_size)
    table = block_tables[:, :num_blocks].long()
    if table.shape[1] < num_blocks:  # tables narrower than max_len: pad (positions masked anyway)
        table = torch.nn.functional.pad(table, (0, num_blocks - table.shape[1]))
    blocks = table[:, pos // block_size]  # [num_seqs, max_len]
    return cache[blocks, (pos % block_size).expand_as(blocks)]


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            context_lens: torch.Tensor, scale: float,
                            sliding_window: int | None = None, soft_cap: float | None = None,
                            *, max_query_len: int | None = None,
                            max_context_len: int | None = None,
                            out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of packed variable-length query chunks over the paged cache.

    q: ``[T, num_heads, head_dim]`` with chunk ``s`` at rows
    ``query_start_loc[s]:query_start_loc[s+1]``; the chunk's K/V must already be in the cache.
    Query ``i`` of a chunk of length ``L`` in a context of length ``C`` is at position
    ``C - L + i``. ``max_*`` (host ints) avoid a device sync when given.
    """
    num_tokens, num_heads, head_dim = q.shape
    num_seqs = context_lens.shape[0]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    dt = _compute_dtype(q)
    dev = q.device
    qsl = query_start_loc.long()
    query_lens = qsl[1:] - qsl[:-1]
    ctx = context_lens.long()
    if max_query_len is None:
        max_query_len = int(query_lens.max()) if num_seqs else 0
    if max_context_len is None:
        max_context_len = int(ctx.max()) if num_seqs else 0
    if out is None:
        out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0:
        return out

    # Pad queries to [num_seqs, max_query_len, ...]: row i of chunk s is packed row qsl[s] + i.
    qi = torch.arange(max_query_len, device=dev)
    q_valid = qi[None, :] < query_lens[:, None]  # [S, Lq]
    rows = torch.where(q_valid, qsl[:-1, None] + qi[None, :], 0)
    qp = q[rows].to(dt) * q_valid[..., None, None]  # [S, Lq, H, D]
    q_pos = (ctx - query_lens)[:, None] + qi[None, :]  # absolute positions [S, Lq]

    kj = torch.arange(max_context_len, device=dev)
    k_valid = kj[None, :] < ctx[:, None]  # [S, Lk]
    keep = k_valid[..., None, None]
    # Zero unused positions so poisoned (NaN) slots cannot leak through 0 * NaN.
    kp = torch.where(keep, _gather_context(k_cache, block_tables, max_context_len).to(dt), 0)
    vp = torch.where(keep, _gather_context(v_cache, block_tables, max_context_len).to(dt), 0)

    # GQA: view query heads as [num_kv_heads, group].
    qg = qp.view(num_seqs, max_query_len, num_kv_heads, group, head_dim)
    scores = torch.einsum("sqkgd,sjkd->skgqj", qg, kp) * scale  # [S, Hkv, G, Lq, Lk]
    if soft_cap is not None:
        scores = soft_cap * torch.tanh(scores / soft_cap)
    visible = k_valid[:, None, :] & (kj[None, None, :] <= q_pos[:, :, None])  # [S, Lq, Lk]
    if sliding_window is not None:
        visible &= q_pos[:, :, None] - kj[None, None, :] < sliding_window
    scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key (padding) -> 0
    o = torch.einsum("skgqj,sjkd->sqkgd", probs, vp).reshape(
        num_seqs, max_query_len, num_heads, head_dim)
    out[rows[q_valid]] = o[q_valid].to(out.dtype)
    return out


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                           sliding_window: int | None = None, soft_cap: float | None = None,
                           *, max_context_len: int | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """One query per sequence (``q[s]`` at position ``context_lens[s] - 1``) over the cache.

    The same math as a prefill whose chunks are all one token long.
    """
    num_seqs = q.shape[0]
    qsl = torch.arange(num_seqs + 1, device=q.device, dtype=torch.int32)
    return paged_prefill_attention(q, k_cache, v_cache, block_tables, qsl, context_lens, scale,
                                   sliding_window, soft_cap, max_query_len=1,
                                   max_context_len=max_context_len, out=out)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None):
    """RMSNorm over the last dim, as HF Llama computes it.

    With ``residual``: ``residual = x + residual`` (rounded to x's dtype, as the unfused model
    does) and the norm is of that; returns ``(out, residual)``. Without: returns ``out``.
    """
    dt = _compute_dtype(x)
    if residual is not None:
        x = (x.to(dt) + residual.to(dt)).to(x.dtype)
    xf = x.to(dt)
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = (normed.to(x.dtype).to(dt) * weight.to(dt)).to(x.dtype)
    return out if residual is None else (out, x)


def rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
           cos_sin_cache: torch.Tensor, head_dim: int, rotary_dim: int, is_neox_style: bool):
    """Rotary position embedding of q and k; returns new ``(q, k)`` of the input shapes.

    q/k: ``[T, heads * head_dim]`` or ``[T, heads, head_dim]``; the first ``rotary_dim`` dims of
    each head rotate, the rest pass through. ``cos_sin_cache[pos] = [cos (rotary_dim/2) |
    sin (rotary_dim/2)]`` (vLLM's layout). Neox style rotates the two halves of those dims,
    GPT-J style rotates interleaved pairs.
    """
    cs = cos_sin_cache[positions.long()]
    half = rotary_dim // 2

    def rotate(x: torch.Tensor) -> torch.Tensor:
        dt = _compute_dtype(x)
        xs = x.reshape(x.shape[0], -1, head_dim).to(dt)
        cos = cs[:, None, :half].to(dt)
        sin = cs[:, None, half:rotary_dim].to(dt)
        rot = xs[..., :rotary_dim]
        if is_neox_style:
            x1, x2 = rot[..., :half], rot[..., half:]
            rot = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            rot = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
        return torch.cat([rot, xs[..., rotary_dim:]], dim=-1).to(x.dtype).reshape(x.shape)

    return rotate(q), rotate(k)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :d]) * x[..., d:]`` for x of last dim ``2d`` (the gated MLP activation)."""
    dt = _compute_dtype(x)
    d = x.shape[-1] // 2
    xf = x.to(dt)
    return (torch.nn.functional.silu(xf[..., :d]) * xf[..., d:]).to(x.dtype)
