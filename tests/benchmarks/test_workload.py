"""The synthetic workload: deterministic per seed, inside the requested ranges, varied, chat-rendered."""
import pytest

from pagedllm.benchmarks.workload import build_workload, workload_stats


@pytest.fixture(scope="module")
def tokenizer(bundled_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundled_model_path)


def test_same_seed_same_workload(tokenizer):
    a = build_workload(tokenizer, num_requests=40, seed=7)
    b = build_workload(tokenizer, num_requests=40, seed=7)
    assert a == b


def test_different_seed_different_workload(tokenizer):
    a = build_workload(tokenizer, num_requests=40, seed=0)
    b = build_workload(tokenizer, num_requests=40, seed=1)
    assert [r.prompt for r in a] != [r.prompt for r in b]
    assert [r.output_len for r in a] != [r.output_len for r in b]


def test_default_size_and_ranges(tokenizer):
    requests = build_workload(tokenizer)
    assert len(requests) == 128
    lens = [r.output_len for r in requests]
    assert min(lens) >= 16 and max(lens) <= 256
    assert max(lens) - min(lens) > 150  # uniform over the range, not a constant


def test_custom_ranges_are_respected(tokenizer):
    requests = build_workload(tokenizer, num_requests=30, min_output_len=5, max_output_len=9, seed=3)
    assert len(requests) == 30
    assert {r.output_len for r in requests} <= set(range(5, 10))
    fixed = build_workload(tokenizer, num_requests=5, min_output_len=12, max_output_len=12)
    assert [r.output_len for r in fixed] == [12] * 5


def test_prompts_are_varied_chat_prompts(tokenizer):
    requests = build_workload(tokenizer, seed=0)
    assert len({r.prompt for r in requests}) == len(requests)
    prompt_lens = [len(r.prompt_token_ids) for r in requests]
    assert max(prompt_lens) > 2 * min(prompt_lens)
    for r in requests:  # SmolLM2's ChatML template, generation prompt included
        assert r.prompt.startswith("<|im_start|>system") and r.prompt.endswith("<|im_start|>assistant\n")
        assert r.prompt_token_ids == tokenizer(r.prompt, add_special_tokens=False)["input_ids"]
    stats = workload_stats(requests)
    assert stats["num_requests"] == 128 and stats["prompt_tokens"] == sum(prompt_lens)


@pytest.mark.parametrize("kwargs, name", [
    ({"num_requests": 0}, "num_requests"),
    ({"min_output_len": 0}, "min_output_len"),
    ({"min_output_len": 20, "max_output_len": 10}, "max_output_len"),
])
def test_bad_arguments_name_the_parameter(tokenizer, kwargs, name):
    with pytest.raises(ValueError, match=name):
        build_workload(tokenizer, **kwargs)
