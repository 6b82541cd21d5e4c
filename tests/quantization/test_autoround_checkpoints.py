"""GPTQ and AWQ checkpoints written by someone else's quantizer — Intel's auto-round 0.16.1 from the
package registry (autoround_checkpoints/make_checkpoints.py says how) — read by pagedllm.

Three checks, each able to fail on a misread layout: (1) the format's spec, read element by element
(w4a16_reference), turns the files back into the source weights within the quantization step (a
wrong bit slot, zero offset or group would put most elements many steps off); (2) pagedllm's
quantized layers compute exactly what the spec reads; (3) its greedy tokens equal those of the spec's
dense weights run dense. The source is rebuilt here from its seed (model_fixtures), as it was made.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model_fixtures import make_tiny_model, tokenizer_path
from pagedllm import LLM, SamplingParams
from pagedllm.models.layers.linear import LinearBase
from pagedllm.quantization.w4a16_linear import W4A16LinearMethod
from w4a16_reference import reference_awq, reference_gptq

FIXTURES = Path(__file__).parent / "autoround_checkpoints"
SOURCE = dict(hidden_size=128, intermediate_size=256, vocab_size=256)  # as make_checkpoints.py
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "self_attn.o_proj": ("self_attn.o_proj",), "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
         "mlp.down_proj": ("mlp.down_proj",)}
LAYERS = 2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("autoround_source"), "llama", **SOURCE)
    return load_file(Path(path) / "model.safetensors")


def with_tokenizer(path: Path) -> Path:
    """Adds the bundled tokenizer (left out of the fixtures: 3.5 MB)."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tokenizer_path()) / name).exists():
            shutil.copy(Path(tokenizer_path()) / name, path / name)
    return path


def spec_weights(fmt: str) -> dict[str, np.ndarray]:
    """float64 [out, in] of every quantized projection, read from the files by the spec."""
    tensors = load_file(FIXTURES / fmt / "model.safetensors")
    config = json.loads((FIXTURES / fmt / "config.json").read_text())["quantization_config"]
    assert config["provider"] == "auto-round" and config["quant_method"] == fmt
    out = {}
    for layer in range(LAYERS):
        for proj in PROJECTIONS:
            prefix = f"model.layers.{layer}.{proj}."
            t = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if fmt == "gptq":  # auto_gptq's v1 layout: zeros stored minus one
                out[prefix + "weight"] = reference_gptq(t["qweight"], t["qzeros"], t["scales"], t["g_idx"],
                                                        config["bits"], zero_offset=1)
            else:
                out[prefix + "weight"] = reference_awq(t["qweight"], t["qzeros"], t["scales"], config["group_size"])
    return out


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_the_spec_reads_the_files_back_to_the_source_weights(fmt, source):
    tensors = load_file(FIXTURES / fmt / "model.safetensors")
    for name, dense in spec_weights(fmt).items():
        scales = tensors[name.replace(".weight", ".scales")].double().numpy()  # [groups, out]
        step = np.repeat(scales, 32, axis=0).T  # [out, in]: each element's quantization step
        error = np.abs(dense - source[name].double().numpy())
        assert (error <= step * 0.51).mean() > 0.99, name  # round to nearest, up to opt-rtn's moved scales
        assert (error <= step * 1.01).all(), name


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_pagedllm_runs_what_the_spec_reads(fmt, tmp_path):
    expected = spec_weights(fmt)
    shutil.copytree(FIXTURES / fmt, tmp_path / fmt)
    quantized = LLM(str(with_tokenizer(tmp_path / fmt)), dtype="float32", kv_cache_memory=16 << 20)
    layers = {n: m for n, m in quantized.llm_engine.runner.model.named_modules()
              if isinstance(m, LinearBase) and ".layers." in n}
    assert len(layers) == 4 * LAYERS and all(isinstance(m.linear_method, W4A16LinearMethod) for m in layers.values())
    for name, layer in layers.items():
        layer_prefix, fused = name.rsplit(".", 2)[0], name.split(".", 3)[3]
        want = np.concatenate([expected[f"{layer_prefix}.{part}.weight"] for part in FUSED[fused]])
        with torch.no_grad():
            got = layer(torch.eye(layer.input_size)).double().numpy().T  # column j = W e_j
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=name)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompts = [{"prompt_token_ids": ids} for ids in ([5, 6, 7], [200, 3], [17, 17, 42, 9, 101])]
    got = [list(o.outputs[0].token_ids) for o in quantized.generate(prompts, params, use_tqdm=False)]
    del quantized

    dense_dir = tmp_path / "dense"
    shutil.copytree(FIXTURES / fmt, dense_dir, ignore=shutil.ignore_patterns("model.safetensors", "quant*"))
    config = json.loads((dense_dir / "config.json").read_text())
    del config["quantization_config"]
    (dense_dir / "config.json").write_text(json.dumps(config))
    with_tokenizer(dense_dir)
    kept = {k: v for k, v in load_file(FIXTURES / fmt / "model.safetensors").items()
            if not k.endswith(("qweight", "qzeros", "scales", "g_idx"))}
    save_file(kept | {k: torch.from_numpy(v).float().contiguous() for k, v in expected.items()},
              dense_dir / "model.safetensors")
    dense = LLM(str(dense_dir), dtype="float32", kv_cache_memory=16 << 20)
    assert got == [list(o.outputs[0].token_ids) for o in dense.generate(prompts, params, use_tqdm=False)]
