"""Baichuan 1/2 against a float64 reference written here from the published modelling code.

transformers has no Baichuan classes (the checkpoints ship their own code), so each case is a
folder like a published one: a ``configuration_baichuan.py`` of our own with the published field
names, ``config.json`` pointing at it through ``auto_map`` (so it needs ``trust_remote_code``),
random safetensors under the published weight names, and the bundled tokenizer. The oracle
recomputes the whole sequence each step (no cache) in float64 and shares no code with pagedllm.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from model_parity import PROMPTS, VOCAB
from model_fixtures import bundled_path

HIDDEN, HEADS, LAYERS, INTER, EPS = 64, 8, 3, 96, 1e-6
MAX_TOKENS = 32

CONFIG_SRC = '''
from transformers import PretrainedConfig


class {cls}(PretrainedConfig):
    model_type = "baichuan"

    def __init__(self, vocab_size=64000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, hidden_act="silu", initializer_range=0.02, rms_norm_eps=1e-6,
                 use_cache=True, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
{extra_args}                 **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.use_cache = use_cache
{extra_sets}        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)
'''

# The published variants: architecture name, config class, its variant-specific fields, and
# the two quirks the reference applies (ALiBi instead of RoPE; NormHead).
CASES = {
    "baichuan-7b": dict(arch="BaiChuanForCausalLM", cls="BaiChuanConfig",
                        fields=dict(max_position_embeddings=256), alibi=False, norm_head=False),
    "baichuan-13b": dict(arch="BaichuanForCausalLM", cls="BaichuanConfig",
                         fields=dict(model_max_length=256), alibi=True, norm_head=False),
    "baichuan2-7b": dict(arch="BaichuanForCausalLM", cls="BaichuanConfig",
                         fields=dict(max_position_embeddings=256, model_max_length=256, z_loss_weight=0),
                         alibi=False, norm_head=True),
    "baichuan2-13b": dict(arch="BaichuanForCausalLM", cls="BaichuanConfig",
                          fields=dict(model_max_length=256, z_loss_weight=0), alibi=True, norm_head=True),
}


def _random_weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def mat(*shape):
        return torch.randn(*shape, generator=g) * 0.08

    def norm():
        return 1 + torch.randn(HIDDEN, generator=g) * 0.1

    w = {"model.embed_tokens.weight": mat(VOCAB, HIDDEN), "model.norm.weight": norm()}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.W_pack.weight"] = mat(3 * HIDDEN, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = mat(HIDDEN, HIDDEN)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = mat(INTER, HIDDEN)
        w[p + "mlp.up_proj.weight"] = mat(INTER, HIDDEN)
        w[p + "mlp.down_proj.weight"] = mat(HIDDEN, INTER)
    # Rows of very different norms, so that NormHead's normalisation changes the ranking.
    w["lm_head.weight"] = mat(VOCAB, HIDDEN) * (0.2 + 3 * torch.rand(VOCAB, 1, generator=g))
    return w


def _write_folder(path, case: dict, weights: dict) -> None:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    fields = case["fields"]
    extra_args = "".join(f"                 {k}={v!r},\n" for k, v in fields.items())
    extra_sets = "".join(f"        self.{k} = {k}\n" for k in fields)
    (path / "configuration_baichuan.py").write_text(
        CONFIG_SRC.format(cls=case["cls"], extra_args=extra_args, extra_sets=extra_sets))
    config = dict(architectures=[case["arch"]], model_type="baichuan",
                  auto_map={"AutoConfig": f"configuration_baichuan.{case['cls']}"},
                  vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, hidden_act="silu", rms_norm_eps=EPS, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2, torch_dtype="float32", **fields)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    extra = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": torch.ones(HIDDEN // HEADS // 2)
             for i in range(LAYERS)} if not case["alibi"] else {}  # the RoPE checkpoints carry these
    save_file({**weights, **extra}, str(path / "model.safetensors"))
    AutoTokenizer.from_pretrained(bundled_path()).save_pretrained(path)


# ---- the float64 reference, from the published modelling code ---------------------------------

def _slopes(n: int) -> list[float]:
    """Baichuan's ``_get_interleave``: a geometric series for a power of two heads, else that of the
    closest power below, topped up with every other slope of the series for twice as many."""
    if math.log2(n).is_integer():
        first = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [first ** (i + 1) for i in range(n)]
    below = 2 ** math.floor(math.log2(n))
    return _slopes(below) + _slopes(2 * below)[0::2][:n - below]


def _rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def _rotate(x, pos):
    """Llama-style rotary (rotate_half over the whole head), base 10000."""
    d = x.shape[-1]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.outer(pos.double(), inv_freq)
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    x1, x2 = x[..., :d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def reference_logits(w: dict, ids: list[int], alibi: bool, norm_head: bool) -> torch.Tensor:
    """[len(ids), vocab] logits of a full forward pass in float64."""
    w = {k: v.double() for k, v in w.items()}
    T, d = len(ids), HIDDEN // HEADS
    pos = torch.arange(T)
    x = w["model.embed_tokens.weight"][torch.tensor(ids)]
    causal = pos[None, :] > pos[:, None]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "input_layernorm.weight"])
        q, k, v = (h @ w[p + "self_attn.W_pack.weight"].T).view(T, 3, HEADS, d).unbind(1)
        if not alibi:
            q, k = _rotate(q, pos), _rotate(k, pos)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
        if alibi:  # per-key bias slope * key_position, after the scaling, as the 13B code does
            scores = scores + torch.tensor(_slopes(HEADS), dtype=torch.float64)[:, None, None] * pos.double()
        probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
        x = x + torch.einsum("hqk,khd->qhd", probs, v).reshape(T, HIDDEN) @ w[p + "self_attn.o_proj.weight"].T
        h = _rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    head = w["lm_head.weight"]
    if norm_head:
        head = head / head.norm(dim=-1, keepdim=True)
    return _rms(x, w["model.norm.weight"]) @ head.T


def reference_greedy(w, ids, alibi, norm_head, n=MAX_TOKENS) -> list[int]:
    ids = list(ids)
    for _ in range(n):
        ids.append(int(reference_logits(w, ids, alibi, norm_head)[-1].argmax()))
    return ids[-n:]


# ---- tests -------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=sorted(CASES))
def folder(request, tmp_path_factory):
    case = CASES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    weights = _random_weights(seed=sorted(CASES).index(request.param))
    _write_folder(path, case, weights)
    return path, case, weights


def test_baichuan_matches_reference(folder):
    from pagedllm import LLM, SamplingParams

    path, case, w = folder
    llm = LLM(str(path), dtype="float32", kv_cache_memory=32 << 20, block_size=16, trust_remote_code=True)
    assert type(llm.llm_engine.hf_config).__name__ == case["cls"]  # the folder's own config class
    assert llm.llm_engine.max_model_len == 256  # 13B configs give only model_max_length
    tok = llm.get_tokenizer()
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, prompt_logprobs=1)
    outs = llm.generate(PROMPTS, params, use_tqdm=False)  # one batch
    flipped = []
    for prompt, out in zip(PROMPTS, outs):
        ids = tok.encode(prompt)
        assert out.prompt_token_ids == ids
        want = reference_greedy(w, ids, case["alibi"], case["norm_head"])
        assert out.outputs[0].token_ids == want, prompt
        ref = torch.log_softmax(reference_logits(w, ids, case["alibi"], case["norm_head"]), dim=-1)
        got = torch.tensor([out.prompt_logprobs[p][ids[p]].logprob for p in range(1, len(ids))], dtype=torch.float64)
        torch.testing.assert_close(got, ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])], atol=1e-4, rtol=0)
        # The case's quirk is visible: the reference without it (NormHead off, or the other
        # position encoding) generates different tokens.
        quirk = dict(alibi=case["alibi"], norm_head=not case["norm_head"]) if case["norm_head"] \
            else dict(alibi=not case["alibi"], norm_head=False)
        flipped.append(reference_greedy(w, ids, **quirk, n=8) != want[:8])
    assert any(flipped)


def test_baichuan_refused_without_trust_remote_code(folder):
    from pagedllm import LLM

    path, _, _ = folder
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        LLM(str(path), dtype="float32", kv_cache_memory=8 << 20)
