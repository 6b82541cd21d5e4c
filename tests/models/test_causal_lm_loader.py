"""The one loader (``CausalLM.load_weights``): it loads a checkpoint whole and refuses a partial or
foreign one, naming the tensor; Hugging Face's own state dict and forward pass are the oracle."""
from __future__ import annotations

import pytest
import torch

from pagedllm.models.gpt_neox import GPTNeoXForCausalLM
from pagedllm.models.llama import LlamaForCausalLM


def _tiny(config_cls, model_cls, **kw):
    torch.manual_seed(0)
    config = config_cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, **kw)
    hf = model_cls(config).eval()
    return config, {k: v.clone() for k, v in hf.state_dict().items()}


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM as HF

    return _tiny(LlamaConfig, HF, num_key_value_heads=2, tie_word_embeddings=False)


def test_every_parameter_loaded_from_hf_names(llama):
    config, state = llama
    model = LlamaForCausalLM(config)
    loaded = model.load_weights(state.items())
    assert loaded == {n for n, _ in model.named_parameters()}
    qkv = model.model.layers[1].self_attn.qkv_proj.weight
    want = torch.cat([state[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv"])
    torch.testing.assert_close(qkv, want, rtol=0, atol=0)


def test_missing_tensor_is_named(llama):
    config, state = llama
    partial = {k: v for k, v in state.items() if k != "model.layers.1.mlp.down_proj.weight"}
    with pytest.raises(ValueError, match=r"missing weights: \['model.layers.1.mlp.down_proj.weight'\]"):
        LlamaForCausalLM(config).load_weights(partial.items())


def test_foreign_tensor_is_named(llama):
    config, state = llama
    extra = dict(state, **{"model.layers.0.mlp.extra_proj.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="'model.layers.0.mlp.extra_proj.weight' has no parameter"):
        LlamaForCausalLM(config).load_weights(extra.items())


def test_rename_table_maps_every_checkpoint_name():
    """GPT-NeoX's checkpoint names (``gpt_neox.*``, ``embed_out``) all land on the shared block's names."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM as HF

    config, state = _tiny(GPTNeoXConfig, HF, tie_word_embeddings=False)
    # published checkpoints (and save_pretrained) call the head embed_out; transformers 5 renames it in memory
    state = {("embed_out.weight" if k == "lm_head.weight" else k): v for k, v in state.items()}
    model = GPTNeoXForCausalLM(config)
    model.load_weights(state.items())
    torch.testing.assert_close(model.lm_head.weight, state["embed_out.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.model.layers[1].mlp.fc_out.bias, state["gpt_neox.layers.1.mlp.dense_4h_to_h.bias"],
                               rtol=0, atol=0)
