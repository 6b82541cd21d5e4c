"""Bad adapters and bad arguments: one clear error naming the adapter (or the argument); the engine and
other requests go on unaffected."""
import json

import pytest

from lora_fixtures import PROMPTS, make_peft_adapter
from model_fixtures import make_tiny_model
from pagedllm import LLM, EngineConfig, LoRARequest, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)


@pytest.mark.parametrize("kwargs,name", [
    (dict(max_loras=0), "max_loras"), (dict(max_lora_rank=0), "max_lora_rank"),
    (dict(max_loras=4, max_cpu_loras=2), "max_cpu_loras"), (dict(max_loras="2"), "max_loras"),
])
def test_engine_arguments_are_checked(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        EngineConfig.from_kwargs("m", enable_lora=True, **kwargs)


def test_lora_request_fields_are_checked():
    assert LoRARequest("a", 1, "/p").adapter_id == 1
    assert LoRARequest("a", 1, lora_local_path="/p").lora_path == "/p"  # vLLM's old name
    with pytest.raises(ValueError, match="lora_int_id"):
        LoRARequest("a", 0, "/p")
    with pytest.raises(ValueError, match="lora_name"):
        LoRARequest("", 1, "/p")
    with pytest.raises(ValueError, match="lora_path"):
        LoRARequest("a", 1)


@pytest.fixture(scope="module")
def llm_and_bad_adapters(tiny_llama_adapters, tmp_path_factory):
    base, adapters = tiny_llama_adapters
    root = tmp_path_factory.mktemp("bad")
    make_peft_adapter(base, root / "rank32", ["q_proj"], r=32, alpha=32)
    make_peft_adapter(base, root / "lm_head", ["q_proj", "lm_head"], r=4)
    wide = make_tiny_model(root / "wide-base", "llama", hidden_size=128)
    make_peft_adapter(wide, root / "wide", ["q_proj", "down_proj"], r=4)
    (root / "not-peft").mkdir()
    _rename_modules(adapters["attn-r8"][0], root / "neox-names", "q_proj", "query_key_value")
    llm = LLM(base, dtype="float32", kv_cache_memory=32 << 20, enable_lora=True, max_loras=2, max_lora_rank=16)
    return llm, adapters, root


@pytest.mark.parametrize("folder,message", [
    ("rank32", r"rank 32 .*exceeds max_lora_rank=16"),
    ("neox-names", r"targets module\(s\) model.layers.0.self_attn.query_key_value, .* that this LlamaForCausalLM "
                   r"does not have as a LoRA-capable layer"),
    ("lm_head", r"lm_head.* is not a LoRA A/B weight"),
    ("wide", r"another base model \((hidden|layer) size mismatch\)"),
    ("missing", r"no such folder"),
    ("not-peft", r"adapter_config.json is missing"),
])
def test_bad_adapter_is_refused_by_name_and_others_run_on(llm_and_bad_adapters, folder, message):
    llm, adapters, root = llm_and_bad_adapters
    good = LoRARequest("good", 1, adapters["attn-r8"][0])
    before = llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=[good, None, good, None])
    bad = LoRARequest(f"bad-{folder}", 2, str(root / folder))
    with pytest.raises(ValueError, match=message) as info:
        llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=[good, None, bad, None])
    assert f"'bad-{folder}'" in str(info.value)
    assert not llm.llm_engine.has_unfinished_requests()  # the call's accepted requests were withdrawn
    after = llm.generate(PROMPTS, GREEDY, use_tqdm=False, lora_request=[good, None, good, None])
    assert [o.outputs[0].token_ids for o in after] == [o.outputs[0].token_ids for o in before]


def _rename_modules(src, dst, old: str, new: str) -> None:
    """A copy of an adapter whose modules are named as another architecture's (e.g. GPT-NeoX's)."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    tensors = load_file(f"{src}/adapter_model.safetensors")
    renamed = {k.replace(f".{old}.", f".{new}."): v for k, v in tensors.items()}
    save_file(renamed, str(dst / "adapter_model.safetensors"))
    config = json.loads(open(f"{src}/adapter_config.json").read())
    config["target_modules"] = [new if t == old else t for t in config["target_modules"]]
    (dst / "adapter_config.json").write_text(json.dumps(config))


def test_unsupported_peft_features_are_named(llm_and_bad_adapters, tmp_path):
    llm, adapters, _ = llm_and_bad_adapters
    import shutil

    folder = tmp_path / "dora"
    shutil.copytree(adapters["attn-r8"][0], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match="'dora'.*DoRA"):
        llm.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("dora", 5, str(folder)))


def test_one_id_names_one_adapter(llm_and_bad_adapters):
    llm, adapters, _ = llm_and_bad_adapters
    llm.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("a", 3, adapters["attn-r8"][0]))
    with pytest.raises(ValueError, match="lora_int_id=3 is adapter 'a'"):
        llm.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("b", 3, adapters["mlp-r4"][0]))


def test_lora_request_needs_enable_lora(tiny_llama_adapters):
    base, adapters = tiny_llama_adapters
    llm = LLM(base, dtype="float32", kv_cache_memory=16 << 20)
    with pytest.raises(ValueError, match="enable_lora=True"):
        llm.generate("hi", GREEDY, use_tqdm=False, lora_request=LoRARequest("a", 1, adapters["attn-r8"][0]))
    with pytest.raises(TypeError, match="lora_request"):
        llm.generate("hi", GREEDY, use_tqdm=False, lora_request="a")
    with pytest.raises(ValueError, match="lora_request has 2 entries for 1 prompts"):
        llm.generate("hi", GREEDY, use_tqdm=False, lora_request=[None, None])
