"""The transformers baseline: left padding, EOS ignored, only requested tokens counted."""
import random

import pytest
import torch

from pagedllm.benchmarks.hf_backend import left_pad, load_hf_model, run_hf
from pagedllm.benchmarks.workload import SyntheticRequest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama saved to disk and loaded back the way the benchmark loads it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return load_hf_model(str(path), torch.float32)


def make_requests(n: int, seed: int = 0) -> list[SyntheticRequest]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ids = [rng.randrange(3, 128) for _ in range(rng.randint(2, 12))]
        out.append(SyntheticRequest(prompt="", prompt_token_ids=ids, output_len=rng.randint(1, 10)))
    return out


def test_left_pad():
    reqs = [SyntheticRequest("", [5, 6, 7], 1), SyntheticRequest("", [9], 1)]
    ids, mask = left_pad(reqs, pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_counts_only_requested_tokens(tiny_model, batch_size):
    requests = make_requests(7)
    result = run_hf(tiny_model, requests, batch_size=batch_size)
    assert result["output_tokens"] == sum(r.output_len for r in requests)
    assert result["prompt_tokens"] == sum(len(r.prompt_token_ids) for r in requests)
    assert result["num_requests"] == 7 and result["batch_size"] == batch_size
    # Static batching computes every row up to its batch's longest request.
    batches = [requests[i:i + batch_size] for i in range(0, len(requests), batch_size)]
    assert result["generated_tokens"] == sum(len(b) * max(r.output_len for r in b) for b in batches)
    assert result["generated_tokens"] >= result["output_tokens"]
    assert result["elapsed_s"] > 0


def test_eos_does_not_stop_generation(tiny_model):
    """The twin of ignore_eos=True: even when greedy decoding picks EOS, the batch runs on."""
    requests = make_requests(3, seed=1)
    with torch.no_grad():
        first = int(tiny_model(torch.tensor([requests[0].prompt_token_ids])).logits[0, -1].argmax())
    old = tiny_model.generation_config.eos_token_id
    tiny_model.generation_config.eos_token_id = first
    try:
        result = run_hf(tiny_model, requests, batch_size=3)  # raises if a batch stopped early
    finally:
        tiny_model.generation_config.eos_token_id = old
    assert result["generated_tokens"] == 3 * max(r.output_len for r in requests)


def test_bad_batch_size_names_the_flag(tiny_model):
    with pytest.raises(ValueError, match="hf-batch-size"):
        run_hf(tiny_model, make_requests(2), batch_size=0)
