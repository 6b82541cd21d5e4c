"""OPT (positions offset by 2, projected embeddings, pre- and post-LayerNorm) against transformers."""
import pytest

from model_parity import VOCAB, assert_parity, save_random_model

CASES = {
    "pre-norm-projected": dict(word_embed_proj_dim=32),  # opt-125m style + project_in/out (opt-350m)
    "post-norm": dict(do_layer_norm_before=False),  # opt-350m's post-LayerNorm blocks
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_opt_matches_transformers(case, tmp_path):
    from transformers import OPTConfig

    config = OPTConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       architectures=["OPTForCausalLM"], **CASES[case])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)
