"""Falcon's three attention layouts (multi-query, grouped new architecture, MHA sequential) and its
ALiBi variant (falcon-rw) against transformers."""
import math

import pytest
import torch

from model_parity import VOCAB, assert_parity, save_random_model

CASES = {
    "multi-query-parallel": dict(),  # falcon-7b
    "new-arch-grouped": dict(new_decoder_architecture=True, num_kv_heads=2),  # falcon-40b/180b
    "mha-sequential-bias": dict(multi_query=False, parallel_attn=False, bias=True),
    "rw-alibi": dict(alibi=True, multi_query=False, parallel_attn=False, bias=True),  # falcon-rw-1b/7b
    "alibi-multi-query": dict(alibi=True),  # one KV head: every query head's own slope through the GQA folding
}


def _config(**kwargs):
    from transformers import FalconConfig

    base = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=256, bos_token_id=1, eos_token_id=2, architectures=["FalconForCausalLM"])
    return FalconConfig(**{**base, **kwargs})


@pytest.mark.parametrize("case", sorted(CASES))
def test_falcon_matches_transformers(case, tmp_path):
    hf = save_random_model(tmp_path, _config(**CASES[case]))
    if CASES[case].get("alibi"):
        # transformers' eager Falcon adds the ALiBi bias twice (in the scores and again in the
        # mask); its SDPA path computes the original Falcon-RW attention, so it is the oracle.
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, attn_implementation="sdpa").eval()
    assert_parity(tmp_path, hf)


def test_falcon_alibi_slopes_are_falcons():
    """32 heads (falcon-rw-1b): slopes rounded to bfloat16 as Falcon's own code does, over sqrt(head_dim)."""
    from transformers.models.falcon.modeling_falcon import build_alibi_tensor

    from pagedllm.models.falcon import FalconForCausalLM

    config = _config(hidden_size=128, num_attention_heads=32, alibi=True, multi_query=False)
    got = FalconForCausalLM(config).model.layers[0].self_attn.attn.alibi_slopes
    # Falcon's bias at key position 1 is exactly its (rounded) slope.
    want = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), 32, torch.float32).view(32, 2)[:, 1] / math.sqrt(4)
    assert got == want.tolist()
