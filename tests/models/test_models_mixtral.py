"""Mixtral (top-2 of 4 experts) against transformers, including experts whose router scores tie."""
import pytest
import torch

from model_parity import VOCAB, assert_parity, save_random_model


def _tie_experts(model):
    """Experts 1 and 2 get identical router rows (exact ties) but different weights, in every layer."""
    for layer in model.model.layers:
        router = layer.mlp.gate.weight
        router[2] = router[1]


@pytest.mark.parametrize("ties", [False, True])
def test_mixtral_matches_transformers(ties, tmp_path):
    from transformers import MixtralConfig

    config = MixtralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=256, sliding_window=None, bos_token_id=1, eos_token_id=2,
                           architectures=["MixtralForCausalLM"])
    hf = save_random_model(tmp_path, config, tweak=_tie_experts if ties else None)
    if ties:  # the tie decides routing: tokens whose top 2 hold exactly one of the tied experts
        with torch.no_grad():
            probs = torch.softmax(torch.randn(256, 64) @ hf.model.layers[0].mlp.gate.weight.T, dim=-1)
        top = torch.topk(probs, 2, dim=-1).indices
        assert torch.equal(probs[:, 1], probs[:, 2])
        assert ((top == 1) ^ (top == 2)).any(dim=-1).any()
    assert_parity(tmp_path, hf)
