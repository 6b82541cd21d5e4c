"""Phi-3 (checkpoint-fused qkv/gate_up) and Phi-4-mini-style partial rotary against transformers."""
import pytest

from model_parity import VOCAB, assert_parity, save_random_model


@pytest.mark.parametrize("partial", [1.0, 0.75])
def test_phi3_matches_transformers(partial, tmp_path):
    from transformers import Phi3Config

    config = Phi3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        partial_rotary_factor=partial, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        architectures=["Phi3ForCausalLM"])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)
