"""LoRA adapters over fp8 weights: the adapter wraps the fp8 layers' method, and greedy tokens equal those of
the same adapter over the dequantized dense twin."""
import pytest

from fp8_files import write_fp8
from lora_fixtures import PROMPTS, make_peft_adapter
from model_fixtures import make_tiny_model
from pagedllm import LLM, LoRARequest, SamplingParams
from pagedllm.quantization.fp8_linear import Fp8LinearMethod

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.mark.slow  # ~12 s: PEFT builds the adapter on the HF model
def test_adapter_over_fp8_weights_equals_the_dense_twin(tmp_path):
    source = make_tiny_model(tmp_path / "source", "llama", hidden_size=128, intermediate_size=256)
    _, dense = write_fp8(source, None, tmp_path / "dense")
    make_peft_adapter(dense, tmp_path / "adapter", ["q_proj", "v_proj", "down_proj"], r=8, alpha=16)
    lora = LoRARequest("a", 1, str(tmp_path / "adapter"))
    outputs = {}
    for name, folder, extra in (("fp8", source, dict(quantization="fp8")), ("dense", dense, {})):
        llm = LLM(folder, dtype="float32", kv_cache_memory=16 << 20, enable_lora=True, max_loras=1, **extra)
        if name == "fp8":
            qkv = llm.llm_engine.runner.model.model.layers[0].self_attn.qkv_proj.linear_method
            assert isinstance(qkv.base, Fp8LinearMethod)
        outputs[name] = [[o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False,
                                                                       lora_request=r)] for r in (lora, None)]
    assert outputs["fp8"] == outputs["dense"]
    assert outputs["fp8"][0] != outputs["fp8"][1]  # the adapter changed the tokens
