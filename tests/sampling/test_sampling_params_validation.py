"""SamplingParams: vLLM's defaults, and invalid values name the field and the range."""
from __future__ import annotations

import pytest

from pagedllm import BeamSearchParams, SamplingParams, StructuredOutputsParams


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n=0 must be >= 1"),
    (dict(n=3, best_of=2), "best_of=2 must be >= n=3"),
    (dict(presence_penalty=2.5), r"presence_penalty=2.5 must be in \[-2, 2\]"),
    (dict(frequency_penalty=-3), r"frequency_penalty=-3 must be in \[-2, 2\]"),
    (dict(repetition_penalty=0), "repetition_penalty=0 must be > 0"),
    (dict(temperature=-1), "temperature=-1 must be >= 0"),
    (dict(top_p=0), r"top_p=0 must be in \(0, 1\]"),
    (dict(top_k=-2), "top_k=-2 must be -1 or 0"),
    (dict(min_p=1.5), r"min_p=1.5 must be in \[0, 1\]"),
    (dict(max_tokens=0), "max_tokens=0 must be >= 1"),
    (dict(min_tokens=5, max_tokens=2), "min_tokens=5 must be <= max_tokens=2"),
    (dict(logprobs=-1), "logprobs=-1 must be >= 0"),
    (dict(prompt_logprobs=-1), "prompt_logprobs=-1 must be >= 0"),
    (dict(stop=[""]), "stop="),
    (dict(stop="x", detokenize=False), "detokenize=True"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
    (dict(logit_bias={"a": 1}), "logit_bias key 'a'"),
    (dict(allowed_token_ids=[]), "allowed_token_ids"),
    (dict(bad_words=[" "]), "bad_words"),
    (dict(truncate_prompt_tokens=0), "truncate_prompt_tokens=0 must be >= 1"),
    (dict(early_stopping="sometimes"), "early_stopping"),
])
def test_invalid_values_raise_value_error_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


def test_defaults_and_normalisation():
    p = SamplingParams(stop="###", logit_bias={"5": 300, 7: -0.5},
                       structured_outputs={"choice": ["a", "b"]})
    assert (p.n, p.best_of, p.num_samples, p.top_k, p.repetition_penalty) == (1, None, 1, 0, 1.0)
    assert p.stop == ["###"] and p.logit_bias == {5: 100.0, 7: -0.5}  # clamped like vLLM
    assert isinstance(p.structured_outputs, StructuredOutputsParams)
    assert SamplingParams(n=2, best_of=5).num_samples == 5
    assert SamplingParams.from_optional(guided_decoding={"regex": "a+"}, top_k=None).structured_outputs.regex == "a+"
    with pytest.raises(TypeError, match="unexpected sampling parameter"):
        SamplingParams.from_optional(nucleus=0.9)
    with pytest.raises(TypeError, match="temperature must be a number"):
        SamplingParams(temperature="hot")
    with pytest.raises(ValueError, match="beam_width=0 must be >= 1"):
        BeamSearchParams(beam_width=0, max_tokens=4)


def test_vocabulary_checks_at_add_request(bundled_llm_fp32):
    llm = bundled_llm_fp32
    for kw, field in ((dict(logit_bias={10 ** 6: 1.0}), "logit_bias"),
                      (dict(allowed_token_ids=[10 ** 6]), "allowed_token_ids"),
                      (dict(stop_token_ids=[10 ** 6]), "stop_token_ids")):
        with pytest.raises(ValueError, match=field):
            llm.generate("hi", SamplingParams(**kw), use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_allowed_tokens_bias_bad_words_and_truncation_on_the_model(bundled_llm_fp32):
    llm = bundled_llm_fp32
    tok = llm.get_tokenizer()
    allowed = tok.encode(" yes no maybe", add_special_tokens=False)
    out = llm.generate("Is it?", SamplingParams(temperature=0.9, seed=1, max_tokens=6, allowed_token_ids=allowed),
                       use_tqdm=False)[0].outputs[0]
    assert set(out.token_ids) <= set(allowed)
    free = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)[0]
    first = free.outputs[0].token_ids[0]
    banned = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=4,
                                                                    bad_words=[tok.decode([first]).strip()]),
                          use_tqdm=False)[0].outputs[0]
    assert first not in banned.token_ids
    biased = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=3,
                                                                    logit_bias={42: 100}), use_tqdm=False)[0]
    assert biased.outputs[0].token_ids == [42, 42, 42]
    trunc = llm.generate("one two three four five six", SamplingParams(max_tokens=1, truncate_prompt_tokens=3),
                         use_tqdm=False)[0]
    assert trunc.prompt_token_ids == tok.encode("one two three four five six")[-3:]
