"""GPT-J (interleaved partial rotary, parallel residual, biased head) against transformers."""
from model_parity import VOCAB, assert_parity, save_random_model


def test_gptj_matches_transformers(tmp_path):
    from transformers import GPTJConfig

    config = GPTJConfig(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=256,
                        bos_token_id=1, eos_token_id=2, architectures=["GPTJForCausalLM"])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)
