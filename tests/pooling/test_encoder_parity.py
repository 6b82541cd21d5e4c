"""Native encoders and decoder embedders against Hugging Face's own models, pooled in float64.

The oracle runs each input alone (no padding) through transformers in float64 and pools it with
the formulas written out here; pagedllm runs them packed in one fp32 step.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_fixtures import make_tiny_encoder, make_tiny_model

TEXTS = ["Hello, my name is", "The capital of France is Paris, and it is large.", "a",
         "Embeddings of " + "many words " * 30]


def reference_pool(hidden: torch.Tensor, pooling_type: str) -> torch.Tensor:
    return {"MEAN": hidden.mean(0), "CLS": hidden[0], "LAST": hidden[-1]}[pooling_type]


def hf_vectors(path, token_ids: list[list[int]], pooling_type: str, normalize: bool, dims: int | None = None,
               causal: bool = False):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path, dtype=torch.float64).eval()
    out = []
    with torch.no_grad():
        for ids in token_ids:
            hidden = model(torch.tensor([ids])).last_hidden_state[0]
            v = reference_pool(hidden, pooling_type)[:dims]
            out.append(F.normalize(v, dim=-1) if normalize else v)
    return torch.stack(out)


def ours(llm, texts, **params):
    from pagedllm import PoolingParams

    outs = llm.encode(texts, PoolingParams(**params), use_tqdm=False)
    return [o.prompt_token_ids for o in outs], torch.stack([o.outputs.data for o in outs]).double()


@pytest.mark.parametrize("arch", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("pooling_type", ["MEAN", "CLS", "LAST"])
def test_encoder_equals_transformers(tmp_path_factory, arch, pooling_type):
    from pagedllm import LLM

    path = make_tiny_encoder(tmp_path_factory.mktemp(arch), arch)
    llm = LLM(path, dtype="float32", pooler_config={"pooling_type": pooling_type, "normalize": False})
    assert llm.llm_engine.runner_type == "pooling"
    ids, got = ours(llm, TEXTS)
    want = hf_vectors(path, ids, pooling_type, normalize=False)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    _, normed = ours(llm, TEXTS, normalize=True)
    torch.testing.assert_close(normed, F.normalize(want, dim=-1), atol=2e-6, rtol=1e-5)


def test_roberta_uses_its_whole_position_table(tmp_path):
    """RoBERTa's positions start at pad_token_id + 1: 130 table rows leave 128 tokens of input."""
    from pagedllm import LLM

    path = make_tiny_encoder(tmp_path, "roberta")
    llm = LLM(path, dtype="float32", pooler_config={"pooling_type": "MEAN"})
    assert llm.llm_engine.max_model_len == 128
    longest = [101] + [2000 + i for i in range(126)] + [102]
    _, got = ours(llm, [longest], normalize=False)
    torch.testing.assert_close(got, hf_vectors(path, [longest], "MEAN", False), atol=2e-5, rtol=1e-4)


def test_matryoshka_dimensions_cut_then_normalize(tmp_path):
    from pagedllm import LLM

    path = make_tiny_encoder(tmp_path, "bert", is_matryoshka=True)
    llm = LLM(path, dtype="float32", pooler_config={"pooling_type": "CLS"})
    ids, got = ours(llm, TEXTS, dimensions=16)
    assert got.shape == (len(TEXTS), 16)
    torch.testing.assert_close(got, hf_vectors(path, ids, "CLS", True, dims=16), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("pooling_type", ["LAST", "MEAN"])
def test_decoder_as_embedder_equals_its_hidden_states(tmp_path, pooling_type):
    """A causal LM with runner='pooling' (Qwen3-Embedding / gte-Qwen2 style) pools its last hidden states."""
    from pagedllm import LLM

    path = make_tiny_model(tmp_path, "qwen2")
    llm = LLM(path, dtype="float32", runner="pooling", pooler_config={"pooling_type": pooling_type})
    assert (llm.llm_engine.pooler.pooling_type, llm.llm_engine.pooler.normalize) == (pooling_type, True)
    ids, got = ours(llm, TEXTS)
    torch.testing.assert_close(got, hf_vectors(path, ids, pooling_type, True), atol=2e-6, rtol=1e-5)
    assert llm.llm_engine.kv_cache_usage == 0.0  # every request's blocks were freed


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_headless_decoder_checkpoint_is_an_embedder(tmp_path, arch):
    """A ``Qwen2Model`` / ``LlamaModel`` folder (a decoder saved without its LM head, as gte-Qwen2 and
    Qwen3-Embedding ship) runs as a pooling model by itself: LAST pooling, normalized."""
    from transformers import AutoModel

    from pagedllm import LLM

    source = make_tiny_model(tmp_path / "lm", arch)
    AutoModel.from_pretrained(source).save_pretrained(tmp_path / "body")  # drops the head and the "model." prefix
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path / "body")
    llm = LLM(str(tmp_path / "body"), dtype="float32")
    engine = llm.llm_engine
    assert (engine.runner_type, engine.pooler.pooling_type, engine.pooler.normalize) == ("pooling", "LAST", True)
    ids, got = ours(llm, TEXTS)
    torch.testing.assert_close(got, hf_vectors(str(tmp_path / "body"), ids, "LAST", True), atol=2e-6, rtol=1e-5)
