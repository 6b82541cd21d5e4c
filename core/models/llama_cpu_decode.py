"""A Llama-family decode step on CPU as a flat run of the kernel calls the model's modules make.

Why: one decoded token of the bundled 135M model is ~10 kernel calls per layer, each a few to a few
tens of microseconds of arithmetic; the module tree around them (``nn.Module`` calls, the forward
context, the attention backend's bookkeeping, views and splits) cost more than the arithmetic, about
half of a single-stream step on a 2-core CPU (``pagedllm bench step``). llama.cpp's step has no such
layer. This is the CPU's counterpart of the CUDA decode graphs (``worker/cuda_graphs.py``): built once
after the KV cache exists, taken for decode-only steps, and off with ``enforce_eager=True``.

It calls exactly what the modules call, in the same order, on the same tensors (the C norm, rotary and
activation of ``cpu_ops``, the linear methods' ``apply``, the paged store and decode of ``cpu_decode``),
so a step's hidden states are the modules' bit for bit (tests/models/test_llama_cpu_decode.py). Where every
projection is one GGUF weight on the 8-bit activation kernel, steps of few rows (as many as the projections
take that kernel for: ``gguf_weight.direct_rows``) make those calls from C
in one call (``kernels/cpu_decode_layers.c``); the Python loop here serves the rest (dense weights, larger
steps, fp8 KV caches).
``build`` takes a model only where that holds: the plain Llama block (no q/k norm, sliding window, soft-cap or
ALiBi; biases are the linear methods' own business), its C ops bound, no LoRA; anything else runs the modules.
A tensor-parallel rank's plan all-reduces the row-parallel o and down products where their modules do (the
whole-model C call is for one rank only). A pipeline stage's plan runs its own layers, from the embedding or the previous
stage's (hidden, residual), to the final norm or the next stage's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from pagedllm.attention.cpu_backend import CpuAttentionBackend
from pagedllm.distributed import get_tp_world_size, tp_all_reduce
from pagedllm.kernels import cpu_decode, cpu_gguf, cpu_ops, kv_fp8
from pagedllm.models.layers.activation import SiluAndMul
from pagedllm.models.layers.layernorm import RMSNorm
from pagedllm.models.layers.linear import (LinearBase, MergedColumnParallelLinear, QKVParallelLinear,
                                           RowParallelLinear)
from pagedllm.models.layers.mlp import GatedMLP
from pagedllm.models.layers.qkv_attention import QKVAttention
from pagedllm.quantization import gguf_weight
from pagedllm.quantization.gguf_linear import GGUFLinearMethod

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Layer:
    """What one decoder layer's step reads, looked up once."""

    input_norm: torch.Tensor  # float32 weights of the two RMSNorms
    post_norm: torch.Tensor
    eps: float
    qkv: LinearBase
    o: LinearBase
    gate_up: LinearBase
    down: LinearBase
    attn: nn.Module  # the Attention layer: its caches and backend
    cos: torch.Tensor
    sin: torch.Tensor
    neox: int
    # per projection (qkv, o, gate_up, down): the GGUF direct kernel that ``apply`` reaches for a few rows, or None
    rows: tuple


def _linear(layer: LinearBase, x: torch.Tensor, rows) -> torch.Tensor:
    """``layer``'s output for x [n, in] as its linear method computes it; through the GGUF direct kernel itself
    when ``apply`` would reach it (one quantized weight, no bias, n <= ``direct_rows``), skipping two calls."""
    if rows is not None and x.shape[0] <= gguf_weight.direct_rows(x.dtype):
        return rows(x, x.dtype)
    return layer.linear_method.apply(layer, x)


def _direct_kernel(layer: LinearBase):
    method = layer.linear_method
    if (isinstance(method, GGUFLinearMethod) and method.weights is not None and len(method.weights) == 1
            and getattr(layer, "bias", None) is None):
        return method.weights[0].row_kernel(gguf_weight.Q8_ACTIVATIONS)  # a decode step's, as matmul picks it
    return None


class LlamaCpuDecode:
    """``run(input_ids, positions, md)``: the final hidden states of a decode-only step."""

    def __init__(self, model: nn.Module, layers: list[_Layer], heads: int, kv_heads: int, head_dim: int):
        self.body = model.model
        self.layers = layers
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.ops = cpu_ops.load()
        self.kernels = cpu_decode.load()
        # one C call for the whole model, on one rank (it all-reduces nothing); None: the Python loop below
        whole = model.model.last_stage and model.model.start_layer == 0 and get_tp_world_size() == 1
        self.in_c = _layers_in_c(model, layers, heads, kv_heads, head_dim) if whole else None
        self.tp = get_tp_world_size() > 1  # shards: the row-parallel o and down products are all-reduced
        self.fp8_cache = kv_fp8.is_fp8_cache(layers[0].attn.k_cache)
        self.c_rows = gguf_weight.direct_rows(model.model.norm.weight.dtype) if whole else 0  # the C call's 8-bit kernel
        self._model = model
        self._cache_at = layers[0].attn.k_cache.data_ptr()  # the C structs hold the caches' addresses

    @classmethod
    def build(cls, model: nn.Module) -> "LlamaCpuDecode | None":
        """The plan for ``model`` (bound to CPU kernels, KV cache allocated), or None where its layers are not
        the plain Llama block this file reproduces (the reason is logged at debug level)."""
        reason = _unsupported(model)
        if reason:
            logger.debug("decode steps run the model's modules: %s", reason)
            return None
        layers = []
        body = model.model
        for layer in body.layers[body.start_layer:body.end_layer]:  # a pipeline stage's own layers
            attn, mlp = layer.self_attn, layer.mlp
            rope = attn.rotary_emb
            layers.append(_Layer(layer.input_layernorm._weight_f32, layer.post_attention_layernorm._weight_f32,
                                 float(layer.input_layernorm.eps), attn.qkv_proj, attn.o_proj, mlp.gate_up_proj,
                                 mlp.down_proj, attn.attn, rope.cos_cache, rope.sin_cache, int(rope.is_neox_style),
                                 tuple(_direct_kernel(m) for m in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj,
                                                                   mlp.down_proj))))
        first = body.layers[body.start_layer].self_attn
        return cls(model, layers, first.num_heads, first.num_kv_heads, first.head_dim)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, md, intermediate=None):
        """The model's forward for a decode-only step: the final hidden states; on a pipeline stage, what its
        forward returns ((hidden, residual) before the last stage, which continues from ``intermediate``)."""
        if self.in_c is not None and self.layers[0].attn.k_cache.data_ptr() != self._cache_at:  # a new KV cache
            self.in_c = _layers_in_c(self._model, self.layers, self.heads, self.kv_heads, self.head_dim)
            self._cache_at = self.layers[0].attn.k_cache.data_ptr()
        if self.in_c is not None and input_ids.shape[0] <= self.c_rows:
            done = self.in_c.run(self.body.embed_tokens(input_ids), positions, md)
            if done is not None:
                hidden, _ = self.body.norm(*done)
                return hidden
        hidden, residual = (self.body.embed_tokens(input_ids), None) if intermediate is None else intermediate
        hidden, residual = self._run_layers(hidden, residual, positions, md)
        if not self.body.last_stage:
            return hidden, residual
        hidden, _ = self.body.norm(hidden, residual)
        return hidden

    def _run_layers(self, hidden: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor, md):
        """The layers from Python: any linear method, any number of rows. Returns (hidden, residual)."""
        ops, H, KVH, D = self.ops, self.heads, self.kv_heads, self.head_dim
        n, width = hidden.shape
        bf16, threads = int(hidden.dtype == torch.bfloat16), torch.get_num_threads()
        positions = positions.contiguous()
        step = cpu_decode.DecodeStep.of(md, H)
        for L in self.layers:
            normed = torch.empty_like(hidden)
            if residual is None:
                residual = hidden
                status = ops.rms_norm(hidden.data_ptr(), hidden.stride(0), None, 0, None, normed.data_ptr(),
                                      L.input_norm.data_ptr(), n, width, L.eps, 1, bf16, threads)
            else:
                summed = torch.empty_like(hidden)
                status = ops.rms_norm(hidden.data_ptr(), hidden.stride(0), residual.data_ptr(), residual.stride(0),
                                      summed.data_ptr(), normed.data_ptr(), L.input_norm.data_ptr(), n, width, L.eps,
                                      1, bf16, threads)
                residual = summed
            qkv = _linear(L.qkv, normed, L.rows[0])
            row = qkv.stride(0)
            # q and k heads side by side: one rotation in place, as the rotary module does it
            status |= ops.rotary_embedding(qkv.data_ptr(), row, n, H + KVH, D, positions.data_ptr(),
                                           L.cos.data_ptr(), L.sin.data_ptr(), L.cos.shape[0], L.cos.shape[1],
                                           L.neox, bf16, threads)
            if status:
                raise RuntimeError(f"a CPU layer kernel declined a decode step (status {status})")
            o = _linear(L.o, self._attend(L.attn, qkv, md, step), L.rows[1])
            if self.tp:
                o = tp_all_reduce(o)  # RowParallelLinear.forward's
            normed, summed = torch.empty_like(o), torch.empty_like(o)
            status = ops.rms_norm(o.data_ptr(), o.stride(0), residual.data_ptr(), residual.stride(0), summed.data_ptr(),
                                  normed.data_ptr(), L.post_norm.data_ptr(), n, width, L.eps, 1, bf16, threads)
            residual = summed
            gate_up = _linear(L.gate_up, normed, L.rows[2])
            act = torch.empty(n, gate_up.shape[1] // 2, dtype=hidden.dtype)
            status |= ops.act_and_mul(gate_up.data_ptr(), gate_up.stride(0), act.data_ptr(), n, act.shape[1],
                                      cpu_ops.ACTIVATIONS["silu"], 1, bf16, threads)
            if status:
                raise RuntimeError(f"a CPU layer kernel declined a decode step (status {status})")
            hidden = _linear(L.down, act, L.rows[3])
            if self.tp:
                hidden = tp_all_reduce(hidden)
        return hidden, residual

    def _attend(self, attn: nn.Module, qkv: torch.Tensor, md, step: cpu_decode.DecodeStep) -> torch.Tensor:
        """Store k/v and attend for the rows of ``qkv`` [n, q | k | v]: [n, heads * head_dim], as the CPU
        backend does it (its C store and paged decode; the backend itself for what they decline)."""
        H, KVH, D = self.heads, self.kv_heads, self.head_dim
        n, q_size, kv_size = qkv.shape[0], H * D, KVH * D
        k_cache, v_cache = attn.k_cache, attn.v_cache
        q, k, v = (t.view(n, -1, D) for t in qkv.split([q_size, kv_size, kv_size], dim=1))
        out = torch.empty(n, H, D, dtype=qkv.dtype)
        row, bf16, num_slots = qkv.stride(0), int(qkv.dtype == torch.bfloat16), k_cache.shape[0] * k_cache.shape[1]
        q_rows = q if n == 1 else q.contiguous()  # the kernel reads [n, H, D] rows back to back
        if self.fp8_cache:  # rows of e4m3 codes and a scale: the fp8 kernels quantize and read them
            stored = self.kernels.store_kv_fp8(k.data_ptr(), row, v.data_ptr(), row, k_cache.data_ptr(),
                                               v_cache.data_ptr(), step.slots.data_ptr(), n, KVH, D, num_slots, bf16)
            decode = self.kernels.paged_decode_fp8
        else:
            stored = self.kernels.store_kv(k.data_ptr(), row, v.data_ptr(), row, k_cache.data_ptr(), v_cache.data_ptr(),
                                           step.slots.data_ptr(), n, kv_size, num_slots, qkv.element_size())
            decode = self.kernels.paged_decode
        done = not (stored or decode(
            q_rows.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), step.tables.data_ptr(), step.tables.shape[1],
            step.lens.data_ptr(), out.data_ptr(), n, H, KVH, D, k_cache.shape[1], attn.scale, 0, 0.0, None, bf16,
            step.scratch.data_ptr(), step.window, step.team))
        if not done:
            out = attn.impl.forward(q, k, v, k_cache, v_cache, md)  # what the kernels decline: the backend's path
        return out.view(n, q_size)


def _layers_in_c(model: nn.Module, layers: list[_Layer], heads: int, kv_heads: int, head_dim: int):
    """The layers as one C call (``kernels/cpu_decode_layers``) where every projection is one GGUF weight on the
    8-bit activation kernel and every norm has the same eps; else None."""
    from pagedllm.kernels import cpu_decode_layers

    dtype = model.model.norm.weight.dtype
    if not gguf_weight.Q8_ACTIVATIONS or dtype not in (torch.bfloat16, torch.float32):
        return None
    if any(r is None for L in layers for r in L.rows) or len({L.eps for L in layers}) != 1:
        return None
    weights = [[L_proj.linear_method.weights[0] for L_proj in (L.qkv, L.o, L.gate_up, L.down)] for L in layers]
    if any(w.qtype not in cpu_gguf.Q8_ACTIVATION_TYPES for ws in weights for w in ws):
        return None
    cache = layers[0].attn.k_cache
    if not all(L.attn.k_cache.is_contiguous() and L.attn.v_cache.is_contiguous() for L in layers):
        return None
    c_layers = [cpu_decode_layers.Layer(
        L.input_norm.data_ptr(), L.post_norm.data_ptr(), *(cpu_decode_layers.weight(w) for w in ws),
        L.attn.k_cache.data_ptr(), L.attn.v_cache.data_ptr(), L.cos.data_ptr(), L.sin.data_ptr(), L.cos.shape[0],
        L.cos.shape[1], L.neox, L.attn.scale) for L, ws in zip(layers, weights)]
    return cpu_decode_layers.DecodeLayers.build(
        c_layers, width=model.model.norm.weight.shape[0], heads=heads, kv_heads=kv_heads, head_dim=head_dim,
        intermediate=weights[0][3].cols, block_size=cache.shape[1], num_slots=cache.shape[0] * cache.shape[1],
        eps=layers[0].eps, dtype=dtype, fp8_cache=kv_fp8.is_fp8_cache(cache))


def _unsupported(model: nn.Module) -> str | None:
    """Why ``model`` is not the plain Llama block on CPU kernels, or None."""
    from pagedllm.models.llama import (LlamaDecoderLayer, LlamaForCausalLM, LlamaModel, MistralForCausalLM,
                                       Qwen2ForCausalLM)

    if type(model) not in (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM):
        return f"{type(model).__name__} is not a plain Llama/Mistral/Qwen2 model"
    body = model.model
    if type(body) is not LlamaModel or (body.last_stage and type(body.norm) is not RMSNorm):
        return "not the Llama body with an RMSNorm"
    if cpu_ops.load() is None or cpu_decode.load() is None:
        return "no C kernels"
    for i, layer in enumerate(body.layers[body.start_layer:body.end_layer], start=body.start_layer):
        attn, mlp = layer.self_attn, layer.mlp
        if type(layer) is not LlamaDecoderLayer or type(attn) is not QKVAttention or type(mlp) is not GatedMLP:
            return f"layer {i} is not the plain Llama block"
        norms = (layer.input_layernorm, layer.post_attention_layernorm)
        if any(type(m) is not RMSNorm or m.bound_to != "cpu" or m.eps != norms[0].eps for m in norms):
            return f"layer {i}'s norms are not on the C kernel"
        rope = attn.rotary_emb
        if rope is None or rope.bound_to != "cpu" or attn.q_norm is not None:
            return f"layer {i}'s attention has no rotary on the C kernel, or a q/k norm"
        if type(mlp.act) is not SiluAndMul or mlp.act.bound_to != "cpu":
            return f"layer {i}'s activation is not SiLU on the C kernel"
        inner = attn.attn
        if (not isinstance(inner.impl, CpuAttentionBackend) or inner.sliding_window or inner.logits_soft_cap
                or inner.alibi_slopes is not None
                or not (kv_fp8.is_fp8_cache(inner.k_cache) or inner.k_cache.dtype == layer.input_layernorm.weight.dtype)):
            return f"layer {i}'s attention is not the C paged kernel on a plain cache"
        if (type(attn.qkv_proj) is not QKVParallelLinear or type(attn.o_proj) is not RowParallelLinear
                or type(mlp.gate_up_proj) is not MergedColumnParallelLinear
                or type(mlp.down_proj) is not RowParallelLinear):
            return f"layer {i}'s projections are not the column/row-parallel pairs whose all-reduces this repeats"
    return None
