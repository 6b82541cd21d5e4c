"""Qwen3 (per-head q/k RMSNorm before RoPE, explicit head_dim) against transformers."""
from model_parity import VOCAB, assert_parity, save_random_model


def test_qwen3_matches_transformers(tmp_path):
    from transformers import Qwen3Config

    config = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, architectures=["Qwen3ForCausalLM"])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)
