"""GPT-NeoX / Pythia (rotary_pct, parallel residual, interleaved fused QKV) against transformers."""
import pytest

from model_parity import VOCAB, assert_parity, save_random_model


@pytest.mark.parametrize("parallel", [True, False])
def test_gpt_neox_matches_transformers(parallel, tmp_path):
    from transformers import GPTNeoXConfig

    config = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, max_position_embeddings=256, rotary_pct=0.25,
                           use_parallel_residual=parallel, bos_token_id=1, eos_token_id=2,
                           architectures=["GPTNeoXForCausalLM"])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)
