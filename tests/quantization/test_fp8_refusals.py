"""What fp8 loading refuses, each with a message naming the format and what is supported; nothing falls back
to dense (and nothing quantized already is quantized again)."""
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from fp8_files import write_fp8
from model_fixtures import BUNDLED, make_tiny_model
from pagedllm import LLM
from pagedllm.quantization.fp8_config import read_fp8_config
from pagedllm.quantization.fp8_model import checkpoint_fp8
from w4a16_files import write_quantized

ENGINE = dict(dtype="float32", kv_cache_memory=16 << 20)
FP8 = {"quant_method": "fp8", "activation_scheme": "dynamic"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8_refusals")
    source = make_tiny_model(root / "source", "llama", hidden_size=64, intermediate_size=128)
    fp8, _ = write_fp8(source, root / "fp8", root / "dense")
    gptq, _ = write_quantized(source, root / "gptq", root / "gptq_dense", "gptq", group_size=32)
    return SimpleNamespace(source=source, fp8=fp8, gptq=gptq, root=root)


@pytest.mark.parametrize("cfg,message", [
    ({**FP8, "weight_block_size": [128, 128]}, r"fp8 quantization_config weight_block_size=\[128, 128\] \(block-wise "
                                               r"scales, 'weight_scale_inv', DeepSeek style\) cannot run in this "
                                               r"release; supported: fp8 checkpoints with a per-tensor or "
                                               r"per-channel 'weight_scale'"),
    ({**FP8, "activation_scheme": "per_token"}, r"activation_scheme='per_token' cannot run here; supported: "
                                                r"dynamic, static"),
    ({**FP8, "fmt": "e5m2"}, r"fmt='e5m2' cannot run here; supported: e4m3"),
])
def test_config_refusals(cfg, message):
    with pytest.raises(ValueError, match=message):
        read_fp8_config(cfg)


def test_block_wise_checkpoint_is_refused_at_load(checkpoints, tmp_path):
    fp8, _ = write_fp8(checkpoints.source, tmp_path / "block", tmp_path / "dense",
                       extra_config={"weight_block_size": [128, 128]})
    with pytest.raises(ValueError, match=r"weight_block_size=\[128, 128\].*cannot run in this release"):
        LLM(fp8, **ENGINE)


def test_fp8_on_checkpoints_quantized_already(checkpoints):
    with pytest.raises(ValueError, match=r"quantization='fp8' but the checkpoint at .* is quantized already "
                                         r"\(quantization_config quant_method='gptq'\)"):
        LLM(checkpoints.gptq, quantization="fp8", **ENGINE)
    with pytest.raises(ValueError, match=r"quantization='gptq' but the checkpoint at .* has quantization_config "
                                         r"quant_method='fp8'"):
        LLM(checkpoints.fp8, quantization="gptq", **ENGINE)
    with pytest.raises(ValueError, match=r"quantization='gguf' but model=.* is not a GGUF file"):
        LLM(checkpoints.fp8, quantization="gguf", **ENGINE)


def test_fp8_on_a_gguf_file():
    with pytest.raises(ValueError, match=r"quantization='fp8' but model='m.gguf' is a GGUF file, quantized already; "
                                         r".*dequantize_gguf=True"):
        checkpoint_fp8(SimpleNamespace(quantization="fp8", model="m.gguf", dequantize_gguf=False), SimpleNamespace(),
                       SimpleNamespace(gguf_file="m.gguf", path="x"), torch.device("cpu"))
    found = checkpoint_fp8(SimpleNamespace(quantization="fp8", model="m.gguf", dequantize_gguf=True),
                           SimpleNamespace(), SimpleNamespace(gguf_file="m.gguf", path="x"), torch.device("cpu"))
    assert found is not None and not found.serialized  # its dequantized float weights are quantized at load


def test_fp8_on_the_bundled_gguf_is_refused_by_llm():
    with pytest.raises(ValueError, match=r"quantization='fp8' but model=.* is a GGUF file, quantized already"):
        LLM(BUNDLED, quantization="fp8", kv_cache_memory=16 << 20)


def test_unknown_quant_method_lists_fp8(checkpoints, tmp_path):
    import json
    import shutil

    folder = tmp_path / "bnb"
    shutil.copytree(checkpoints.source, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"quant_method='bitsandbytes', which this release cannot run; supported: "
                                         r"gptq, awq, fp8"):
        LLM(str(folder), **ENGINE)


def test_fp8_checkpoint_with_dense_weights_is_refused(checkpoints, tmp_path):
    """A config that says fp8 over a layer whose weight is not float8_e4m3fn: an error, not a dense load."""
    import shutil

    folder = tmp_path / "mixed"
    shutil.copytree(checkpoints.fp8, folder)
    tensors = load_file(f"{folder}/model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = tensors[name].to(torch.bfloat16)
    save_file(tensors, f"{folder}/model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"fp8 layer model.layers.1.mlp.down_proj: the checkpoint's weight is "
                                         r"torch.bfloat16; an fp8 checkpoint stores float8_e4m3fn weights"):
        LLM(str(folder), **ENGINE)


def test_fp8_needs_a_native_decoder(checkpoints):
    with pytest.raises(ValueError, match=r"cannot run fp8 weights in this release \(it is not a native decoder\)"):
        LLM(checkpoints.source, quantization="fp8", model_impl="transformers", **ENGINE)


def test_fp8_on_a_device_without_kernels():
    with pytest.raises(ValueError, match=r"quantization='fp8' has no mps kernels in this release; supported "
                                         r"devices: cpu, cuda"):
        checkpoint_fp8(SimpleNamespace(quantization="fp8", model="m", dequantize_gguf=False),
                       SimpleNamespace(), SimpleNamespace(gguf_file=None, path="x"), torch.device("mps"))
