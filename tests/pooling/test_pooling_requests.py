"""Pooling requests through the engine: batch invariance and bad input (clear errors, nothing lost)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import make_tiny_model, minilm_path


@pytest.fixture(scope="module")
def minilm():
    from pagedllm import LLM

    return LLM(minilm_path(), dtype="float32")


def test_text_alone_equals_it_in_a_mixed_batch_of_100(minilm):
    """Packing (other inputs before and after it in the step) does not change an input's vector."""
    rng = np.random.default_rng(1)
    words = [w for w in minilm.get_tokenizer().vocab if w.isalpha() and len(w) > 3][:2000]
    batch = [" ".join(rng.choice(words, int(n))) for n in rng.integers(1, 200, 100)]
    probe = "The quick brown fox jumps over the lazy dog."
    batch[57] = probe
    alone = torch.tensor(minilm.embed(probe, use_tqdm=False)[0].outputs.embedding)
    mixed = torch.tensor(minilm.embed(batch, use_tqdm=False)[57].outputs.embedding)
    assert minilm.llm_engine.stats.max_batch_size > 1
    torch.testing.assert_close(mixed, alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize("prompt, kwargs, match", [
    ("", {}, "empty string"),
    ([], {}, "must not be empty"),
    ([101, 30522, 102], {}, "out of vocabulary"),
    ("word " * 300, {}, "truncate_prompt_tokens"),
    ("a text", {"dimensions": 8}, "Matryoshka"),
    ("a text", {"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
])
def test_bad_input_is_refused_and_the_next_request_served(minilm, prompt, kwargs, match):
    from pagedllm import PoolingParams

    with pytest.raises((ValueError, TypeError), match=match):
        params = PoolingParams(**kwargs)
        minilm.embed(prompt, params, use_tqdm=False)
    engine = minilm.llm_engine
    assert not engine.has_unfinished_requests() and not engine.sequences
    assert len(minilm.embed("still served", use_tqdm=False)[0].outputs.embedding) == 384


def test_runners_refuse_the_other_kind_of_request(minilm, tmp_path):
    from pagedllm import LLM

    with pytest.raises(ValueError, match="runner='pooling'"):
        minilm.generate("Hello", max_tokens=4, use_tqdm=False)
    with pytest.raises(ValueError, match="runner='pooling'"):
        LLM(minilm_path(), runner="generate")
    generator = LLM(make_tiny_model(tmp_path), dtype="float32")
    assert generator.llm_engine.runner_type == "generate"
    with pytest.raises(ValueError, match="runner='pooling'"):
        generator.embed("Hello", use_tqdm=False)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"runner": "embed"}, ValueError, "runner='embed'; choose auto, generate or pooling"),
    ({"pooler_config": {"pooling_type": "MAX"}}, ValueError, "pooling_type='MAX'; choose one of MEAN, CLS, LAST"),
    ({"pooler_config": {"pooling": "MEAN"}}, TypeError, "pooling_type"),
    ({"pooler_config": "{not json"}, ValueError, "not JSON"),
])
def test_bad_engine_arguments(kwargs, error, match):
    from pagedllm import LLM

    with pytest.raises(error, match=match):
        LLM(minilm_path(), **kwargs)


def test_pooler_config_overrides_the_sentence_transformers_files():
    from pagedllm import LLM

    llm = LLM(minilm_path(), dtype="float32", pooler_config='{"pooling_type": "CLS", "normalize": false}')
    assert (llm.llm_engine.pooler.pooling_type, llm.llm_engine.pooler.normalize) == ("CLS", False)
