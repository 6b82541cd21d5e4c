"""What GPTQ/AWQ loading refuses, each with a message naming the format and what is supported; nothing
falls back to dense."""
import json
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, Phi3Config

from model_fixtures import make_tiny_model
from pagedllm import LLM
from pagedllm.config import EngineConfig
from pagedllm.models.llama import LlamaForCausalLM
from pagedllm.models.phi3 import Phi3ForCausalLM
from pagedllm.quantization.w4a16_config import read_w4a16_config
from pagedllm.quantization.w4a16_model import checkpoint_w4a16, load_w4a16_weights
from w4a16_files import write_quantized

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}


@pytest.fixture(scope="module")
def gptq_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("w4a16_refusals")
    source = make_tiny_model(root / "source", "llama", hidden_size=64, intermediate_size=128)
    return write_quantized(source, root / "gptq", root / "dense", "gptq", group_size=32)


def with_config(folder, tmp_path, quantization_config):
    """A copy of the checkpoint folder whose config.json carries ``quantization_config``."""
    import shutil

    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (copy / "config.json").write_text(json.dumps(config))
    return str(copy)


@pytest.mark.parametrize("cfg,message", [
    ({"quant_method": "bitsandbytes"}, r"quant_method='bitsandbytes', which this release cannot run; supported: "
                                       r"gptq, awq"),
    ({**GPTQ, "bits": 3}, r"gptq quantization_config bits=3 cannot run here; supported GPTQ bits: 4, 8"),
    ({**GPTQ, "checkpoint_format": "marlin"}, r"checkpoint_format='marlin' cannot run here; supported: gptq, "
                                              r"gptq_v2"),
    ({**GPTQ, "lm_head": True}, r"lm_head=True: a quantized LM head is not supported"),
    ({**GPTQ, "dynamic": {"-:.*down": {}}}, r"'dynamic' \(per-module overrides"),
    ({**GPTQ, "group_size": 0}, r"gptq quantization_config group_size=0: use -1"),
    ({**AWQ, "version": "gemv"}, r"awq quantization_config version='gemv' cannot run here; supported: gemm"),
    ({**AWQ, "bits": 8}, r"awq quantization_config bits=8 cannot run here; supported AWQ bits: 4"),
    ({**AWQ, "zero_point": False}, r"zero_point=False cannot run here"),
])
def test_config_refusals(cfg, message):
    with pytest.raises(ValueError, match=message):
        read_w4a16_config(cfg)


def test_refused_at_load_never_dense(gptq_checkpoint, tmp_path):
    """A 3-bit GPTQ config on a checkpoint is refused by LLM(...), not loaded some other way."""
    folder = with_config(gptq_checkpoint[0], tmp_path, {**GPTQ, "bits": 3})
    with pytest.raises(ValueError, match="bits=3 cannot run here; supported GPTQ bits: 4, 8"):
        LLM(folder, dtype="float32", kv_cache_memory=16 << 20)


def test_quantization_argument_that_contradicts_the_checkpoint(gptq_checkpoint):
    quantized, dense = gptq_checkpoint
    with pytest.raises(ValueError, match=r"quantization='awq' but the checkpoint at .* has quantization_config "
                                         r"quant_method='gptq'"):
        LLM(quantized, quantization="awq", kv_cache_memory=16 << 20)
    with pytest.raises(ValueError, match=r"quantization='gptq' but the checkpoint at .* has no quantization_config"):
        LLM(dense, quantization="gptq", kv_cache_memory=16 << 20)


def test_quantization_gptq_on_a_gguf_file_and_on_cuda():
    config = SimpleNamespace(quantization="gptq", model="m.gguf")
    with pytest.raises(ValueError, match=r"quantization='gptq' but model='m.gguf' is a GGUF file"):
        checkpoint_w4a16(config, SimpleNamespace(), SimpleNamespace(gguf_file="m.gguf", path="x"), torch.device("cpu"))
    config = SimpleNamespace(quantization=None, model="m")
    hf = SimpleNamespace(quantization_config=AWQ)
    with pytest.raises(ValueError, match=r"quantization='awq' has no cuda kernels in this release \(CPU only"):
        checkpoint_w4a16(config, hf, SimpleNamespace(gguf_file=None, path="x"), torch.device("cuda"))


def test_unknown_quantization_argument_lists_the_choices():
    with pytest.raises(ValueError, match=r"quantization='bitsandbytes' is not supported in this release.*'gptq' "
                                         r"or 'awq'.*'fp8'"):
        EngineConfig.from_kwargs("m", quantization="bitsandbytes")


def test_tensor_parallel_over_a_gptq_checkpoint(gptq_checkpoint):
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2: a gptq checkpoint runs quantized on one rank"):
        LLM(gptq_checkpoint[0], tensor_parallel_size=2, kv_cache_memory=16 << 20)


def test_model_whose_loader_relays_fused_tensors():
    config = Phi3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0)
    with pytest.raises(ValueError, match=r"Phi3ForCausalLM cannot run gptq weights in this release \(its loader "
                                         r"re-lays fused tensors.*llama, "
                                         r"mistral, qwen2"):
        load_w4a16_weights(Phi3ForCausalLM(config), "folder", read_w4a16_config(GPTQ))


def test_config_without_packed_tensors(gptq_checkpoint):
    """A quantization_config over a dense checkpoint (no qweight anywhere) is an error, not a dense load."""
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    with pytest.raises(ValueError, match=r"quantization_config says gptq \(bits=4, group_size=128.*but it has no "
                                         r"'.qweight' tensors"):
        load_w4a16_weights(LlamaForCausalLM(config), gptq_checkpoint[1], read_w4a16_config(GPTQ))


def test_desc_act_without_g_idx_and_a_real_bias_without_a_place(tmp_path):
    source = make_tiny_model(tmp_path / "source", "llama", hidden_size=64, intermediate_size=128)
    quantized, _ = write_quantized(source, tmp_path / "q", tmp_path / "d", "gptq", group_size=32, desc_act=True,
                                   write_g_idx=False)
    with pytest.raises(ValueError, match=r"gptq layer model.layers.0.mlp.down_proj: the checkpoint lacks g_idx "
                                         r"\(desc_act=True needs"):
        LLM(quantized, dtype="float32", kv_cache_memory=16 << 20)
    from safetensors.torch import load_file, save_file

    quantized, _ = write_quantized(source, tmp_path / "q2", tmp_path / "d2", "gptq", group_size=32, zero_biases=True)
    tensors = load_file(f"{quantized}/model.safetensors")
    tensors["model.layers.1.mlp.up_proj.bias"][3] = 0.5
    save_file(tensors, f"{quantized}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj.bias' is a non-zero bias, but "
                                         r"LlamaForCausalLM's model.layers.1.mlp.gate_up_proj has no bias"):
        LLM(quantized, dtype="float32", kv_cache_memory=16 << 20)
