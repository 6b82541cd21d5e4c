"""Phi-3 (checkpoint-fused qkv/gate_up), Phi-4-mini-style partial rotary and Phi-3-128k-style
``longrope`` scaling against transformers."""
import math
from types import SimpleNamespace

import pytest
import torch

from model_fixtures import SEED_PROMPTS, bundled_path
from model_parity import VOCAB, assert_parity, save_random_model

ORIGINAL_MAX = 32  # small, so the parity prompts run past it and the long factors are in play


@pytest.mark.parametrize("partial", [1.0, 0.75])
def test_phi3_matches_transformers(partial, tmp_path):
    from transformers import Phi3Config

    config = Phi3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        partial_rotary_factor=partial, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                        architectures=["Phi3ForCausalLM"])
    hf = save_random_model(tmp_path, config)
    assert_parity(tmp_path, hf)


def longrope_config(partial: float = 1.0):
    from transformers import Phi3Config

    n = int(64 // 4 * partial) // 2  # one factor per rotated channel pair
    return Phi3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      original_max_position_embeddings=ORIGINAL_MAX, partial_rotary_factor=partial,
                      rope_scaling={"type": "longrope", "short_factor": torch.linspace(1.0, 1.6, n).tolist(),
                                    "long_factor": torch.linspace(1.0, 24.0, n).tolist()},
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, architectures=["Phi3ForCausalLM"])


@pytest.mark.parametrize("partial", [1.0, 0.75])
def test_phi3_longrope_past_the_original_length_matches_transformers(partial, tmp_path):
    """max_model_len (256) > original_max_position_embeddings: the long factors, as vLLM. Every prompt
    is longer than the original length, so each of transformers' forward passes (prefill and every
    decode) also picks the long factors: the two agree token for token."""
    from transformers import AutoTokenizer

    prompts = [p * 8 for p in SEED_PROMPTS]
    tok = AutoTokenizer.from_pretrained(bundled_path())
    assert min(len(tok.encode(p)) for p in prompts) > ORIGINAL_MAX
    hf = save_random_model(tmp_path, longrope_config(partial))
    llm = assert_parity(tmp_path, hf, prompts=prompts, max_tokens=32)
    rope = llm.llm_engine.runner.model.model.layers[0].self_attn.rotary_emb
    assert rope.cos_cache.shape[0] == 256 > ORIGINAL_MAX


def test_phi3_longrope_within_the_original_length_matches_transformers(tmp_path):
    """max_model_len <= original_max_position_embeddings: the short factors (still the attention
    factor), which is what transformers uses while the sequence stays within that length."""
    hf = save_random_model(tmp_path, longrope_config())
    assert_parity(tmp_path, hf, prompts=SEED_PROMPTS, max_tokens=16, max_model_len=ORIGINAL_MAX)


@pytest.mark.parametrize("max_position", [ORIGINAL_MAX, 256])
def test_longrope_tables_match_transformers_rope_init(max_position):
    """Our cos/sin tables against transformers' own longrope init at the same side of the boundary."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from pagedllm.models.layers.rotary_embedding import RotaryEmbedding, rope_parameters

    config = longrope_config()
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=max_position)
    assert attention_factor == pytest.approx(math.sqrt(1 + math.log(256 / ORIGINAL_MAX) / math.log(ORIGINAL_MAX)))
    rope = RotaryEmbedding(16, 16, max_position, rope_parameters(config))
    freqs = torch.arange(max_position).float()[:, None] * inv_freq
    torch.testing.assert_close(rope.cos_cache, freqs.cos() * attention_factor, atol=0, rtol=0)
    torch.testing.assert_close(rope.sin_cache, freqs.sin() * attention_factor, atol=0, rtol=0)


def test_su_is_the_old_name_of_longrope():
    """transformers 4.x configs (``rope_scaling`` with ``type: su``, the lengths on the config)."""
    from pagedllm.models.layers.rotary_embedding import rope_parameters

    config = SimpleNamespace(max_position_embeddings=131072, original_max_position_embeddings=4096, rope_theta=1e4,
                             rope_scaling={"type": "su", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48})
    params = rope_parameters(config)
    assert params["rope_type"] == "longrope" and params["original_max_position_embeddings"] == 4096
    assert params["attention_factor"] == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
