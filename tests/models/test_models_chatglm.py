"""ChatGLM2/ChatGLM3 (``trust_remote_code`` checkpoints) against an independent float64 reference.

transformers has no ChatGLM classes, so the oracle is written here from THUDM's published
architecture (plain torch, float64, the whole sequence recomputed for every new token, no
pagedllm code). The folder mimics a hub checkpoint: a ``configuration_chatglm.py`` of our own
with the published field names, ``config.json`` with ``auto_map``, safetensors with the published
weight names, and the bundled tokenizer.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from model_fixtures import bundled_path
from model_parity import PROMPTS, VOCAB

CONFIG_SOURCE = '''
from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    model_type = "chatglm"

    def __init__(self, num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696,
                 kv_channels=128, num_attention_heads=32, seq_length=2048, layernorm_epsilon=1e-5, rope_ratio=1,
                 rmsnorm=True, apply_residual_connection_post_layernorm=False, post_layer_norm=True,
                 add_bias_linear=False, add_qkv_bias=False, multi_query_attention=False, multi_query_group_num=1,
                 original_rope=True, quantization_bit=0, pre_seq_len=None, **kwargs):
        self.num_layers = num_layers
        self.vocab_size = padded_vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.layernorm_epsilon = layernorm_epsilon
        self.rope_ratio = rope_ratio
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.original_rope = original_rope
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        super().__init__(**kwargs)
'''

BASE = dict(num_layers=3, padded_vocab_size=VOCAB, hidden_size=128, ffn_hidden_size=192, kv_channels=32,
            num_attention_heads=4, seq_length=256, layernorm_epsilon=1e-5, rope_ratio=1, rmsnorm=True,
            apply_residual_connection_post_layernorm=False, post_layer_norm=True, add_bias_linear=False,
            add_qkv_bias=True, multi_query_attention=True, multi_query_group_num=2)
VARIANTS = {
    # THUDM/chatglm2-6b's shape: MQA groups, qkv bias only, RMSNorm, final norm
    "chatglm2": {},
    # chatglm3-6b-32k: rope_ratio scales the rotary base; a single KV group
    "chatglm3-32k": dict(rope_ratio=50, multi_query_group_num=1, num_layers=2),
    # the other switches: LayerNorm, residual from the normed input, biases everywhere, no MQA,
    # no final norm, a head size that is not hidden_size / heads
    "layernorm-post-residual": dict(rmsnorm=False, apply_residual_connection_post_layernorm=True,
                                    add_bias_linear=True, multi_query_attention=False, post_layer_norm=False,
                                    kv_channels=24),
}


def random_weights(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random float32 tensors under the published checkpoint names."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.08):
        return torch.randn(*shape, generator=g) * std

    h, d, heads = cfg["hidden_size"], cfg["kv_channels"], cfg["num_attention_heads"]
    groups = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else heads
    qkv_rows = (heads + 2 * groups) * d
    w = {"transformer.embedding.word_embeddings.weight": rand(cfg["padded_vocab_size"], h),
         "transformer.output_layer.weight": rand(cfg["padded_vocab_size"], h),
         "transformer.rotary_pos_emb.inv_freq": torch.ones(d // 4)}  # a buffer the release saves; unused

    def norm(prefix):
        w[prefix + ".weight"] = 1 + rand(h, std=0.1)
        if not cfg["rmsnorm"]:
            w[prefix + ".bias"] = rand(h, std=0.05)

    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        norm(p + "input_layernorm")
        norm(p + "post_attention_layernorm")
        w[p + "self_attention.query_key_value.weight"] = rand(qkv_rows, h)
        w[p + "self_attention.dense.weight"] = rand(h, heads * d)
        w[p + "mlp.dense_h_to_4h.weight"] = rand(2 * cfg["ffn_hidden_size"], h)
        w[p + "mlp.dense_4h_to_h.weight"] = rand(h, cfg["ffn_hidden_size"])
        if cfg["add_qkv_bias"] or cfg["add_bias_linear"]:
            w[p + "self_attention.query_key_value.bias"] = rand(qkv_rows, std=0.05)
        if cfg["add_bias_linear"]:
            w[p + "self_attention.dense.bias"] = rand(h, std=0.05)
            w[p + "mlp.dense_h_to_4h.bias"] = rand(2 * cfg["ffn_hidden_size"], std=0.05)
            w[p + "mlp.dense_4h_to_h.bias"] = rand(h, std=0.05)
    if cfg["post_layer_norm"]:
        norm("transformer.encoder.final_layernorm")
    return w


def write_checkpoint(path, cfg: dict, weights: dict) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    config = dict(cfg, architectures=["ChatGLMModel"], model_type="chatglm", torch_dtype="float32",
                  eos_token_id=2, pad_token_id=0,
                  auto_map={"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                            "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"})
    (path / "config.json").write_text(json.dumps(config, indent=1))
    (path / "configuration_chatglm.py").write_text(CONFIG_SOURCE)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
    AutoTokenizer.from_pretrained(bundled_path()).save_pretrained(path)


# ---- the oracle: ChatGLM2/3's forward pass in float64, from the published architecture ----------
def reference_hidden(w: dict, cfg: dict, ids: list[int]) -> torch.Tensor:
    S, h, eps = len(ids), cfg["hidden_size"], cfg["layernorm_epsilon"]
    heads, d = cfg["num_attention_heads"], cfg["kv_channels"]
    groups = cfg["multi_query_group_num"] if cfg["multi_query_attention"] else heads
    post_ln_residual = cfg["apply_residual_connection_post_layernorm"]

    def norm(x, prefix):
        if cfg["rmsnorm"]:
            return w[prefix + ".weight"] * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
        return F.layer_norm(x, (h,), w[prefix + ".weight"], w[prefix + ".bias"], eps)

    # rotary on the first d/2 channels of each head; channel pairs (2i, 2i+1) turn by pos * theta_i
    n = d // 2
    theta = 1.0 / ((10000.0 * cfg["rope_ratio"]) ** (torch.arange(0, n, 2, dtype=torch.float64) / n))
    angle = torch.arange(S, dtype=torch.float64)[:, None] * theta
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]

    def rotate(t):  # [S, heads, d]
        pairs = t[..., :n].reshape(S, t.shape[1], n // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        turned = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).reshape(S, t.shape[1], n)
        return torch.cat([turned, t[..., n:]], dim=-1)

    causal = torch.ones(S, S, dtype=torch.bool).tril()
    x = w["transformer.embedding.word_embeddings.weight"][torch.tensor(ids)]
    for i in range(cfg["num_layers"]):
        p = f"transformer.encoder.layers.{i}."
        ln = norm(x, p + "input_layernorm")
        qkv = F.linear(ln, w[p + "self_attention.query_key_value.weight"], w.get(p + "self_attention.query_key_value.bias"))
        q, k, v = qkv.split([heads * d, groups * d, groups * d], dim=-1)
        q, k, v = rotate(q.view(S, heads, d)), rotate(k.view(S, groups, d)), v.view(S, groups, d)
        k, v = k.repeat_interleave(heads // groups, dim=1), v.repeat_interleave(heads // groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        context = torch.einsum("hqk,khd->qhd", probs, v).reshape(S, heads * d)
        attn = F.linear(context, w[p + "self_attention.dense.weight"], w.get(p + "self_attention.dense.bias"))
        x = (ln if post_ln_residual else x) + attn
        ln = norm(x, p + "post_attention_layernorm")
        gate, up = F.linear(ln, w[p + "mlp.dense_h_to_4h.weight"], w.get(p + "mlp.dense_h_to_4h.bias")).chunk(2, dim=-1)
        mlp = F.linear(F.silu(gate) * up, w[p + "mlp.dense_4h_to_h.weight"], w.get(p + "mlp.dense_4h_to_h.bias"))
        x = (ln if post_ln_residual else x) + mlp
    return norm(x, "transformer.encoder.final_layernorm") if cfg["post_layer_norm"] else x


def reference_greedy(w: dict, cfg: dict, ids: list[int], max_tokens: int) -> list[int]:
    ids, out = list(ids), []
    for _ in range(max_tokens):  # no KV cache: every step recomputes the whole sequence
        logits = F.linear(reference_hidden(w, cfg, ids)[-1], w["transformer.output_layer.weight"])
        out.append(int(logits.argmax()))
        ids.append(out[-1])
    return out


@pytest.fixture(scope="module", params=list(VARIANTS))
def chatglm_folder(request, tmp_path_factory):
    cfg = dict(BASE, **VARIANTS[request.param])
    path = tmp_path_factory.mktemp(f"chatglm-{request.param}")
    weights = random_weights(cfg, seed=len(request.param))
    write_checkpoint(path, cfg, weights)
    return path, cfg, {k: v.double() for k, v in weights.items()}


def test_chatglm_matches_the_float64_reference(chatglm_folder):
    from pagedllm import LLM, SamplingParams

    path, cfg, w = chatglm_folder
    llm = LLM(str(path), dtype="float32", kv_cache_memory=32 << 20, block_size=16, trust_remote_code=True)
    assert type(llm.llm_engine.runner.model).__name__ == "ChatGLMForCausalLM"
    assert llm.llm_engine.max_model_len == cfg["seq_length"]
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True, prompt_logprobs=1)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)  # one batch
    worst = 0.0
    for prompt, out in zip(PROMPTS, outs):
        ids = tok.encode(prompt)
        assert out.prompt_token_ids == ids
        assert out.outputs[0].token_ids == reference_greedy(w, cfg, ids, 32), prompt
        with torch.no_grad():
            ref = torch.log_softmax(F.linear(reference_hidden(w, cfg, ids), w["transformer.output_layer.weight"]), -1)
        got = torch.tensor([out.prompt_logprobs[p][ids[p]].logprob for p in range(1, len(ids))], dtype=torch.float64)
        want = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        worst = max(worst, float((got - want).abs().max()))
    print(f"max prompt logprob diff: {worst:.2e}")


def test_chatglm_is_refused_without_trust_remote_code(chatglm_folder):
    from pagedllm import LLM

    path, _, _ = chatglm_folder
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        LLM(str(path), dtype="float32", kv_cache_memory=8 << 20)


def test_chatglm_v1_is_refused_with_a_clear_error():
    from transformers import PretrainedConfig

    from pagedllm.models.registry import resolve_model_class

    v1 = PretrainedConfig(architectures=["ChatGLMModel"], vocab_size=130528, hidden_size=64, num_layers=1,
                          num_attention_heads=4, inner_hidden_size=128, max_sequence_length=256,
                          position_encoding_2d=True)
    cls = resolve_model_class(v1, "native")
    with pytest.raises(ValueError, match="ChatGLM-6B v1.*not supported"):
        cls(v1, max_position=256)
