"""Mistral's sliding window honoured by the paged cache: prompts and generations run far past the window."""
from model_parity import VOCAB, assert_parity, save_random_model


def test_mistral_sliding_window_matches_transformers(tmp_path):
    from transformers import MistralConfig

    config = MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           sliding_window=12, bos_token_id=1, eos_token_id=2, architectures=["MistralForCausalLM"])
    hf = save_random_model(tmp_path, config)
    llm = assert_parity(tmp_path, hf)  # prompts of 6..~50 tokens + 32 generated, window 12
    assert {a.sliding_window for a in llm.llm_engine.runner.attention_layers} == {12}
