"""LoRA adapters over a GPTQ base (QLoRA's usual serving case): the adapter wraps the packed layers'
method, and greedy tokens equal those of the same adapter over the dequantized dense twin."""
import pytest

from lora_fixtures import PROMPTS, make_peft_adapter
from model_fixtures import make_tiny_model
from pagedllm import LLM, LoRARequest, SamplingParams
from pagedllm.quantization.w4a16_linear import W4A16LinearMethod
from w4a16_files import write_quantized

GREEDY = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)


@pytest.mark.slow  # ~12 s: PEFT builds the adapter on the HF model
def test_adapter_over_a_gptq_base_equals_the_dense_twin(tmp_path):
    source = make_tiny_model(tmp_path / "source", "llama", hidden_size=128, intermediate_size=256)
    quantized, dense = write_quantized(source, tmp_path / "gptq", tmp_path / "dense", "gptq", group_size=32,
                                       sym=False, desc_act=True)
    make_peft_adapter(dense, tmp_path / "adapter", ["q_proj", "v_proj", "down_proj"], r=8, alpha=16)
    lora = LoRARequest("a", 1, str(tmp_path / "adapter"))
    outputs = {}
    for name, folder in (("quantized", quantized), ("dense", dense)):
        llm = LLM(folder, dtype="float32", kv_cache_memory=16 << 20, enable_lora=True, max_loras=1)
        if name == "quantized":
            qkv = llm.llm_engine.runner.model.model.layers[0].self_attn.qkv_proj.linear_method
            assert isinstance(qkv.base, W4A16LinearMethod)
        outputs[name] = [[o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False,
                                                                       lora_request=r)] for r in (lora, None)]
    assert outputs["quantized"] == outputs["dense"]
    assert outputs["quantized"][0] != outputs["quantized"][1]  # the adapter changed the tokens
