"""Falcon's three attention layouts (multi-query, grouped new architecture, MHA sequential) against transformers."""
import pytest

from model_parity import VOCAB, assert_parity, save_random_model

CASES = {
    "multi-query-parallel": dict(),  # falcon-7b
    "new-arch-grouped": dict(new_decoder_architecture=True, num_kv_heads=2),  # falcon-40b/180b
    "mha-sequential-bias": dict(multi_query=False, parallel_attn=False, bias=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_falcon_matches_transformers(case, tmp_path):
    from transformers import FalconConfig

    config = FalconConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
                          architectures=["FalconForCausalLM"], **CASES[case])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)
