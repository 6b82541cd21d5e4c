"""A Llama-family decode step on CPU as a flat run of kernel calls: the same kernels as the model's modules, without the module tree around them.

Why: one decoded token of the bundled 135M model is ~10 kernel calls per layer, each a few to a few
tens of microseconds of arithmetic; the module tree around them (``nn.Module`` calls, the forward
context, the attention backend's bookkeeping, views and splits) cost more than the arithmetic, about
half of a single-stream step on a 2-core CPU (``pagedllm bench step``). llama.cpp's step has no such
layer. This is the CPU's counterpart of the CUDA decode graphs (``worker/cuda_graphs.py``): built once
after the KV cache exists, taken for decode-only steps, and off with ``enforce_eager=True``.

It calls exactly what the modules call, in the same order, on the same tensors (the C norm, rotary and
activation of ``cpu_ops``, the linear methods' ``apply``, the paged store and decode of ``cpu_decode``),
so a step's hidden states are the modules' bit for bit (tests/models/test_llama_cpu_decode.py).
``build`` takes a model only where that holds: the plain Llama block (no q/k norm, sliding window, soft-cap or
ALiBi; biases are the linear methods' own business), its C ops bound, one rank, no LoRA; anything else runs
the modules.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from pagedllm.attention.cpu_backend import CpuAttentionBackend
from pagedllm.kernels import cpu_decode, cpu_ops, kv_fp8
from pagedllm.models.layers.activation import SiluAndMul
from pagedllm.models.layers.layernorm import RMSNorm
from pagedllm.models.layers.linear import LinearBase
from pagedllm.models.layers.mlp import GatedMLP
from pagedllm.models.layers.qkv_attention import QKVAttention

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


class LlamaCpuDecode:
    """``run(input_ids, positions, md)``: the final hidden states of a decode-only step."""

    def __init__(self, model: nn.Module, layers: list[_Layer], heads: int, kv_heads: int, head_dim: int):
        self.body = model.model
        self.layers = layers
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.ops = cpu_ops.load()
        self.kernels = cpu_decode.load()

    @classmethod
    def build(cls, model: nn.Module) -> "LlamaCpuDecode | None":
        """The plan for ``model`` (bound to CPU kernels, KV cache allocated), or None where its layers are not
        the plain Llama block this file reproduces (the reason is logged at debug level)."""
        reason = _unsupported(model)
        if reason:
            logger.debug("decode steps run the model's modules: %s", reason)
            return None
        layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            rope = attn.rotary_emb
            layers.append(_Layer(layer.input_layernorm._weight_f32, layer.post_attention_layernorm._weight_f32,
                                 float(layer.input_layernorm.eps), attn.qkv_proj, attn.o_proj, mlp.gate_up_proj,
                                 mlp.down_proj, attn.attn, rope.cos_cache, rope.sin_cache, int(rope.is_neox_style)))
        first = model.model.layers[0].self_attn
        return cls(model, layers, first.num_heads, first.num_kv_heads, first.head_dim)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, md) -> torch.Tensor:
        ops, kernels = self.ops, self.kernels
        H, KVH, D = self.heads, self.kv_heads, self.head_dim
        q_size, kv_size = H * D, KVH * D
        hidden = self.body.embed_tokens(input_ids)
        n, width = hidden.shape
        bf16, threads = int(hidden.dtype == torch.bfloat16), torch.get_num_threads()
        positions = positions.contiguous()
        residual = None
        for L in self.layers:
            normed = torch.empty_like(hidden)
            if residual is None:
                residual = hidden
                status = ops.rms_norm(hidden.data_ptr(), hidden.stride(0), None, 0, None, normed.data_ptr(),
                                      L.input_norm.data_ptr(), n, width, L.eps, 1, bf16, threads)
            else:
                summed = torch.empty_like(hidden)
                status = ops.rms_norm(hidden.data_ptr(), hidden.stride(0), residual.data_ptr(), residual.stride(0),
                                      summed.data_ptr(),
                                      normed.data_ptr(), L.input_norm.data_ptr(), n, width, L.eps, 1, bf16, threads)
                residual = summed
            qkv = L.qkv.linear_method.apply(L.qkv, normed)
            row = qkv.stride(0)
            # q and k heads side by side: one rotation in place, as the rotary module does it
            status |= ops.rotary_embedding(qkv.data_ptr(), row, n, H + KVH, D, positions.data_ptr(),
                                           L.cos.data_ptr(), L.sin.data_ptr(), L.cos.shape[0], L.cos.shape[1],
                                           L.neox, bf16, threads)
            if status:
                raise RuntimeError(f"a CPU layer kernel declined a decode step (status {status})")
            q = qkv[:, :q_size].view(n, H, D)
            k = qkv[:, q_size:q_size + kv_size].view(n, KVH, D)
            v = qkv[:, q_size + kv_size:].view(n, KVH, D)
            attn = L.attn
            out = torch.empty(n, H, D, dtype=hidden.dtype)
            if not (cpu_decode.store_kv(kernels, k, v, attn.k_cache, attn.v_cache, md.slot_mapping) and
                    cpu_decode.paged_decode(kernels, q, attn.k_cache, attn.v_cache, md.decode_block_tables,
                                            md.decode_context_lens, md.max_decode_context_len, attn.scale,
                                            out=out) is not None):
                out = attn.impl.forward(q, k, v, attn.k_cache, attn.v_cache, md)  # what the kernels decline
            o = L.o.linear_method.apply(L.o, out.view(n, q_size))
            normed, summed = torch.empty_like(o), torch.empty_like(o)
            status = ops.rms_norm(o.data_ptr(), o.stride(0), residual.data_ptr(), residual.stride(0), summed.data_ptr(),
                                  normed.data_ptr(), L.post_norm.data_ptr(), n, width, L.eps, 1, bf16, threads)
            residual = summed
            gate_up = L.gate_up.linear_method.apply(L.gate_up, normed)
            act = torch.empty(n, gate_up.shape[1] // 2, dtype=hidden.dtype)
            status |= ops.act_and_mul(gate_up.data_ptr(), gate_up.stride(0), act.data_ptr(), n, act.shape[1],
                                      cpu_ops.ACTIVATIONS["silu"], 1, bf16, threads)
            if status:
                raise RuntimeError(f"a CPU layer kernel declined a decode step (status {status})")
            hidden = L.down.linear_method.apply(L.down, act)
        hidden, _ = self.body.norm(hidden, residual)
        return hidden


def _unsupported(model: nn.Module) -> str | None:
    """Why ``model`` is not the plain Llama block on CPU kernels, or None."""
    from pagedllm.models.llama import (LlamaDecoderLayer, LlamaForCausalLM, LlamaModel, MistralForCausalLM,
                                       Qwen2ForCausalLM)

    if type(model) not in (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM):
        return f"{type(model).__name__} is not a plain Llama/Mistral/Qwen2 model"
    body = model.model
    if (type(body) is not LlamaModel or not body.last_stage or body.start_layer != 0
            or body.end_layer != len(body.layers) or type(body.norm) is not RMSNorm):
        return "a pipeline stage"
    if cpu_ops.load() is None or cpu_decode.load() is None:
        return "no C kernels"
    for i, layer in enumerate(body.layers):
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
                or inner.alibi_slopes is not None or kv_fp8.is_fp8_cache(inner.k_cache)
                or inner.k_cache.dtype != body.norm.weight.dtype):
            return f"layer {i}'s attention is not the C paged kernel on a plain cache"
        if any(linear.tp_size != 1 for linear in (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)):
            return "tensor-parallel shards (the row-parallel projections all-reduce in their modules)"
    return None
