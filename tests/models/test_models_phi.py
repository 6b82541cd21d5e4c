"""Phi (partial rotary, parallel attention+MLP, dense output, biased head) against transformers."""
import pytest

from model_parity import VOCAB, assert_parity, save_random_model


@pytest.mark.parametrize("qk_layernorm", [False, True])
def test_phi_matches_transformers(qk_layernorm, tmp_path):
    from transformers import PhiConfig

    config = PhiConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                       num_attention_heads=4, max_position_embeddings=256, partial_rotary_factor=0.5,
                       qk_layernorm=qk_layernorm, bos_token_id=1, eos_token_id=2, architectures=["PhiForCausalLM"])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)
