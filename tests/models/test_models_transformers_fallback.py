"""The Transformers fallback (HF modelling, attention through the paged cache) against transformers:
two architectures we also implement natively (Llama; Gemma 2 with soft-capping and a sliding
window) and one we do not (StableLM), plus how ``model_impl`` chooses."""
import pytest

from model_parity import VOCAB, assert_parity, save_random_model
from pagedllm.models.transformers_fallback import TransformersForCausalLM

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def _config(name):
    import transformers as T

    if name == "llama":
        return T.LlamaConfig(architectures=["LlamaForCausalLM"], **COMMON)
    if name == "gemma2":
        return T.Gemma2Config(architectures=["Gemma2ForCausalLM"], head_dim=16, sliding_window=16,
                              query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                              **COMMON)
    return T.StableLmConfig(architectures=["StableLmForCausalLM"], partial_rotary_factor=0.5, **COMMON)


@pytest.mark.parametrize("name", ["llama", "gemma2", "stablelm"])
def test_transformers_fallback_matches_transformers(name, tmp_path):
    hf = save_random_model(tmp_path, _config(name))
    llm = assert_parity(tmp_path, hf, model_impl="transformers")
    assert isinstance(llm.llm_engine.runner.model, TransformersForCausalLM)
    layers = llm.llm_engine.runner.attention_layers
    assert len(layers) == 2 and all(bool(a.k_cache.any()) for a in layers)  # attention ran on the paged cache
    if name == "gemma2":
        assert [a.sliding_window for a in layers] == [16, None] and layers[0].logits_soft_cap == 5.0


def test_model_impl_selection():
    from pagedllm.models.registry import resolve_model_class

    assert resolve_model_class(_config("llama")).__name__ == "LlamaForCausalLM"
    assert resolve_model_class(_config("stablelm")) is TransformersForCausalLM  # auto: no native one
    assert resolve_model_class(_config("llama"), "transformers") is TransformersForCausalLM
    with pytest.raises(ValueError, match="not supported"):
        resolve_model_class(_config("stablelm"), "native")
    with pytest.raises(ValueError, match="model_impl='fast'"):
        resolve_model_class(_config("llama"), "fast")


def test_model_impl_is_validated_by_the_engine_config():
    from pagedllm.config import EngineConfig

    with pytest.raises(ValueError, match="model_impl='hf'; choose auto, native or transformers"):
        EngineConfig.from_kwargs("m", model_impl="hf")
