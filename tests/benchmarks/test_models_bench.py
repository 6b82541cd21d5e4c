"""`pagedllm bench models` (issue 7): the family configs, the ratios, and a tiny end-to-end run."""
import json

import pytest

from pagedllm.benchmarks import models as bench
from pagedllm.entrypoints.cli import main


def test_help_lists_the_flags(cli_help):
    out = cli_help("bench", "models")
    for flag in ("--families", "--num-prompts", "--output-len", "--repeat", "--dtype", "--output-json", "--size", "--cache-dir"):
        assert flag in out


def test_families_put_the_references_first_and_reject_unknown_names():
    # llama always; llama_mha as soon as an MHA family (judged against it) is asked for
    assert bench.parse_families("phi,fallback") == ["llama", "phi", "fallback"]
    assert bench.parse_families("gpt2,fallback") == ["llama", "llama_mha", "gpt2", "fallback"]
    assert bench.parse_families("gpt_neox,llama_mha,gpt_neox") == ["llama", "llama_mha", "gpt_neox"]
    assert bench.parse_families("all") == [
        "llama", "llama_mha", *[f for f in bench.FAMILIES if f not in ("llama", "llama_mha")], "fallback"]
    with pytest.raises(ValueError, match="--families: unknown \\['gpt5'\\]"):
        bench.parse_families("llama,gpt5")


def test_ratios_are_against_the_reference_rows_not_the_first_or_fastest():
    rows = {"gpt2": {"output_tokens_per_s": 90.0}, "opt": {"output_tokens_per_s": 70.0},
            "llama": {"output_tokens_per_s": 200.0}, "phi": {"error": "boom"}, "qwen2": {"output_tokens_per_s": 150.0},
            "gemma": {"output_tokens_per_s": 170.0}, "llama_mha": {"output_tokens_per_s": 100.0},
            "mixtral_active": {"output_tokens_per_s": 100.0}, "fallback": {"output_tokens_per_s": 50.0}}
    bench.add_ratios(rows)
    assert {n: r["ratio_to_llama"] for n, r in rows.items()} == {
        "gpt2": 0.45, "opt": 0.35, "llama": 1.0, "phi": None, "qwen2": 0.75, "gemma": 0.85, "llama_mha": 0.5,
        "mixtral_active": 0.5, "fallback": 0.25}
    # MHA families against the Llama path with 9 KV heads, the rest against the GQA llama row
    assert {n: r["reference"] for n, r in rows.items()} == {
        "gpt2": "llama_mha", "opt": "llama_mha", "llama": "llama", "phi": "llama", "qwen2": "llama",
        "gemma": "llama", "llama_mha": "llama", "mixtral_active": "llama", "fallback": "llama"}
    assert {n: r["ratio_to_reference"] for n, r in rows.items()} == {
        "gpt2": 0.9, "opt": 0.7, "llama": 1.0, "phi": None, "qwen2": 0.75, "gemma": 0.85, "llama_mha": 0.5,
        "mixtral_active": 0.5, "fallback": 0.25}
    # 0.8 bound for native families against their reference; fallback and control rows reported, not
    # judged; a failed row is not a pass
    assert {n: r["meets_target"] for n, r in rows.items()} == {
        "gpt2": True, "opt": False, "llama": True, "phi": None, "qwen2": False, "gemma": True, "llama_mha": None,
        "mixtral_active": None, "fallback": None}


def test_an_mha_family_without_its_reference_row_is_not_judged():
    rows = bench.add_ratios({"llama": {"output_tokens_per_s": 200.0}, "gptj": {"output_tokens_per_s": 190.0},
                             "llama_mha": {"error": "boom"}})
    assert rows["gptj"]["ratio_to_llama"] == 0.95
    assert rows["gptj"]["ratio_to_reference"] is None and rows["gptj"]["meets_target"] is None


def test_the_mha_families_are_the_configs_without_grouped_kv_heads():
    """The families judged against llama_mha are exactly those whose 135M config has one KV head per
    query head (and llama_mha is the Llama config with the same heads)."""
    def kv_heads(config):
        for name in ("num_key_value_heads", "num_kv_heads"):
            if getattr(config, name, None):
                return getattr(config, name)
        return config.num_attention_heads  # gpt2, gptj, gpt_neox, opt: one KV head per query head

    configs = {f: bench.family_config(f) for f in bench.FAMILIES if f != "llama_mha"}
    layouts = {f: (c.num_attention_heads, kv_heads(c)) for f, c in configs.items()}
    mha = {f for f, (heads, kv) in layouts.items() if kv == heads}
    assert mha == set(bench.MHA_FAMILIES)
    assert layouts["llama"] == (9, 3)
    reference = bench.family_config("llama_mha")
    assert (reference.num_attention_heads, reference.num_key_value_heads) == (9, 9)
    assert {layouts[f] for f in mha} == {(9, 9)}


def test_every_135m_config_has_about_135m_parameters():
    """SmolLM2's shape per family: 134-137M parameters (Mixtral in all, mixtral_active active, 2.8x in all)."""
    import torch
    from transformers import AutoModelForCausalLM

    for family, (_, arch) in bench.FAMILIES.items():
        config = bench.family_config(family, "135m")
        assert config.architectures == [arch] and config.tie_word_embeddings
        with torch.device("meta"):
            total, active = bench.count_params(AutoModelForCausalLM.from_config(config))
        counted = active if family == "mixtral_active" else total
        assert 134e6 <= counted <= 137e6, (family, total, active)
        if family == "mixtral":
            assert active < 0.6 * total, (family, active)
        elif family == "mixtral_active":
            assert total > 2.5 * active, (family, total)
        else:
            assert total == active, family
    assert bench.family_config("llama_mha").num_key_value_heads == bench.family_config("llama_mha").num_attention_heads


def test_end_to_end_two_tiny_families(tmp_path, capsys):
    """gpt2, llama and llama_mha (tiny), 2 requests x 3 tokens, 2 rounds: same tokens per row;
    ratio_to_llama = row / llama; gpt2 is judged against llama_mha, which is reported, not judged."""
    out_json = tmp_path / "models.json"
    argv = ["bench", "models", "--size", "tiny", "--families", "gpt2,llama,llama_mha", "--num-prompts", "2",
            "--output-len", "3", "--repeat", "2", "--dtype", "float32", "--cache-dir", str(tmp_path / "cache"),
            "--output-json", str(out_json)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    rows = report["results"]
    assert list(rows) == ["llama", "llama_mha", "gpt2"] and report["reference"] == "llama"
    assert report["target_ratio"] == 0.8
    assert report["workload"]["output_tokens"] == 6 and report["same_output_tokens"] and not report["errors"]
    for name, arch in (("llama", "LlamaForCausalLM"), ("llama_mha", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")):
        r = rows[name]
        assert r["architecture"] == arch and r["model_impl"] == "native" and r["output_tokens"] == 6
        assert r["model_class"].startswith("pagedllm.models.")  # native, not the fallback
        assert r["params_total"] == r["params_active"] > 3e6
    for r in rows.values():  # two rounds per row, the median reported
        assert len(r["runs_output_tokens_per_s"]) == 2
        assert r["output_tokens_per_s"] == pytest.approx(sum(r["runs_output_tokens_per_s"]) / 2)
    assert rows["llama"]["ratio_to_llama"] == 1.0
    assert rows["gpt2"]["ratio_to_llama"] == pytest.approx(
        rows["gpt2"]["output_tokens_per_s"] / rows["llama"]["output_tokens_per_s"])
    assert rows["gpt2"]["reference"] == "llama_mha" and report["mha_reference"] == "llama_mha"
    assert rows["gpt2"]["ratio_to_reference"] == pytest.approx(
        rows["gpt2"]["output_tokens_per_s"] / rows["llama_mha"]["output_tokens_per_s"])
    assert rows["gpt2"]["meets_target"] == (rows["gpt2"]["ratio_to_reference"] >= 0.8)
    assert rows["llama_mha"]["meets_target"] is None
    assert report["fallback_ratio"] is None  # not asked for
    assert bench.format_table(report) in printed
    # one complete cached folder per family, no half-built leftovers
    cached = sorted((tmp_path / "cache").iterdir())
    assert [p.name.split("-")[0] for p in cached] == ["gpt2", "llama", "llama_mha"]
    assert all((p / bench.META_FILE).exists() and ".tmp" not in p.name for p in cached)
