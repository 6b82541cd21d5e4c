"""Gemma (scaled embeddings, 1+w RMSNorm, tanh-GELU) and Gemma 2 (soft-capping, alternating sliding
window, sandwich norms) against transformers; the Gemma 2 window is shorter than the prompts."""
from model_parity import VOCAB, assert_parity, save_random_model

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)


def test_gemma_matches_transformers(tmp_path):
    from transformers import GemmaConfig

    hf = save_random_model(tmp_path, GemmaConfig(architectures=["GemmaForCausalLM"], **COMMON))
    assert_parity(tmp_path, hf)


def test_gemma2_soft_capping_and_sliding_window_match_transformers(tmp_path):
    from transformers import Gemma2Config

    config = Gemma2Config(architectures=["Gemma2ForCausalLM"], sliding_window=16, query_pre_attn_scalar=24,
                          attn_logit_softcapping=5.0, final_logit_softcapping=3.0, **COMMON)
    hf = save_random_model(tmp_path, config)
    llm = assert_parity(tmp_path, hf)
    layers = llm.llm_engine.runner.attention_layers
    assert [a.sliding_window for a in layers] == [16, None] and layers[0].logits_soft_cap == 5.0
