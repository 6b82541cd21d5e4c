"""GPT-2 (learned positions, Conv1D weights, tied head) against transformers."""
from model_parity import VOCAB, assert_parity, save_random_model


def test_gpt2_matches_transformers(tmp_path):
    from transformers import GPT2Config

    config = GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=1, eos_token_id=2, architectures=["GPT2LMHeadModel"])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)
