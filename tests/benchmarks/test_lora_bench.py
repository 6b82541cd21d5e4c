"""`bench throughput --lora N`: the flags, and random adapters in PEFT's layout that the engine accepts."""
import json

from pagedllm.benchmarks.lora_workload import write_random_adapters


def test_flags_are_documented(cli_help):
    out = cli_help("bench", "throughput")
    assert "--lora N" in out and "--lora-rank" in out and "--lora-sweep" in out


def test_random_adapters_are_peft_folders_the_engine_reads(tmp_path):
    from model_fixtures import make_tiny_model
    from pagedllm import LLM, LoRARequest, SamplingParams

    base = make_tiny_model(tmp_path / "base", "llama")
    paths = write_random_adapters(base, 2, 4, str(tmp_path / "adapters"), std=0.2)
    config = json.loads((tmp_path / "adapters" / "lora-0" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    llm = LLM(base, dtype="float32", kv_cache_memory=16 << 20, enable_lora=True, max_loras=2, max_lora_rank=4)
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    loras = [LoRARequest(f"r{i}", i + 1, p) for i, p in enumerate(paths)]
    outs = llm.generate(["Hello"] * 3, params, use_tqdm=False, lora_request=[*loras, None])
    assert len({tuple(o.outputs[0].token_ids) for o in outs}) == 3  # each adapter changes the output
    adapted = {n.rsplit(".", 1)[-1] for n in llm.llm_engine.lora_manager.loaded[1].layers}
    assert adapted == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}  # all seven HF projections
