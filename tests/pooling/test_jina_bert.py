"""jina-bert-v2 style encoders (ALiBi, gated MLP) against a float64 forward written out from the published
architecture (its modeling code is remote code on the hub, not in transformers): word + token-type
embeddings and LayerNorm; per layer post-norm attention with scores ``- slope_h * |i - j|`` and a
bias-free [gate | up] projection, ``act(gate) * up``, ``wo``, LayerNorm; mean pooling."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from model_fixtures import minilm_path

HIDDEN, INTER, LAYERS, VOCAB = 48, 96, 2, 30522
TEXTS = ["Hello, my name is", "ALiBi needs no position table " * 6, "a"]


def slopes_press(n: int) -> list[float]:
    """ALiBi's slopes as in Press et al.'s reference code."""
    def power_of_2(m):
        start = 2 ** (-2 ** -(math.log2(m) - 3))
        return [start * start ** i for i in range(m)]
    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + slopes_press(2 * closest)[0::2][:n - closest]


def make_jina(path, heads: int, ff: str) -> tuple[str, dict]:
    from transformers import AutoTokenizer

    gen = torch.Generator().manual_seed(heads)
    w = {"embeddings.word_embeddings.weight": (VOCAB, HIDDEN), "embeddings.token_type_embeddings.weight": (2, HIDDEN)}
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[p + f"attention.self.{name}.weight"], w[p + f"attention.self.{name}.bias"] = (HIDDEN, HIDDEN), (HIDDEN,)
        w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"] = (HIDDEN, HIDDEN), (HIDDEN,)
        w[p + "mlp.gated_layers.weight"] = (2 * INTER, HIDDEN)
        w[p + "mlp.wo.weight"], w[p + "mlp.wo.bias"] = (HIDDEN, INTER), (HIDDEN,)
        for norm in ("attention.output.LayerNorm", "mlp.layernorm"):
            w[p + norm + ".weight"], w[p + norm + ".bias"] = (HIDDEN,), (HIDDEN,)
    w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"] = (HIDDEN,), (HIDDEN,)
    tensors = {k: (torch.randn(shape, generator=gen) * (0.1 if len(shape) == 2 else 0.5)
                   + (1.0 if k.endswith("Norm.weight") or k.endswith("layernorm.weight") else 0.0))
               for k, shape in w.items()}
    save_file(tensors, str(path / "model.safetensors"))
    config = {"architectures": ["JinaBertModel"], "model_type": "bert", "vocab_size": VOCAB, "hidden_size": HIDDEN,
              "num_hidden_layers": LAYERS, "num_attention_heads": heads, "intermediate_size": INTER,
              "hidden_act": "gelu", "max_position_embeddings": 8192, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
              "position_embedding_type": "alibi", "feed_forward_type": ff, "pad_token_id": 0}
    (path / "config.json").write_text(json.dumps(config))
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(path)
    return str(path), tensors


def reference(t: dict, ids: list[int], heads: int, ff: str) -> torch.Tensor:
    t = {k: v.double() for k, v in t.items()}
    ln = lambda x, p: F.layer_norm(x, (HIDDEN,), t[p + ".weight"], t[p + ".bias"], 1e-12)  # noqa: E731
    x = ln(t["embeddings.word_embeddings.weight"][ids] + t["embeddings.token_type_embeddings.weight"][0],
           "embeddings.LayerNorm")
    n, d = len(ids), HIDDEN // heads
    distance = (torch.arange(n)[None, :] - torch.arange(n)[:, None]).abs().double()
    bias = -torch.tensor(slopes_press(heads), dtype=torch.float64)[:, None, None] * distance
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q, k, v = (F.linear(x, t[p + f"attention.self.{s}.weight"], t[p + f"attention.self.{s}.bias"])
                   .view(n, heads, d).transpose(0, 1) for s in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d) + bias, dim=-1)
        ctx = (probs @ v).transpose(0, 1).reshape(n, HIDDEN)
        x = ln(F.linear(ctx, t[p + "attention.output.dense.weight"], t[p + "attention.output.dense.bias"]) + x,
               p + "attention.output.LayerNorm")
        gate, up = F.linear(x, t[p + "mlp.gated_layers.weight"]).split(INTER, dim=-1)
        act = F.gelu(gate) if ff == "geglu" else F.relu(gate)
        x = ln(F.linear(act * up, t[p + "mlp.wo.weight"], t[p + "mlp.wo.bias"]) + x, p + "mlp.layernorm")
    return x.mean(0)


@pytest.mark.parametrize("heads, ff", [(4, "geglu"), (6, "geglu"), (4, "reglu")])
def test_jina_bert_equals_its_float64_forward(tmp_path, heads, ff):
    from pagedllm import LLM, PoolingParams

    path, tensors = make_jina(tmp_path, heads, ff)
    llm = LLM(path, dtype="float32")
    engine = llm.llm_engine
    assert (engine.runner_type, engine.pooler.pooling_type) == ("pooling", "MEAN")
    outs = llm.encode(TEXTS, PoolingParams(normalize=False), use_tqdm=False)
    for out in outs:
        want = reference(tensors, out.prompt_token_ids, heads, ff)
        torch.testing.assert_close(out.outputs.data.double(), want, atol=2e-5, rtol=1e-4)


def test_slopes_match_press_et_al():
    from pagedllm.models.layers.attention import alibi_slopes

    for n in (1, 2, 4, 6, 8, 12, 16, 20):
        assert alibi_slopes(n) == pytest.approx(slopes_press(n), rel=1e-12)
