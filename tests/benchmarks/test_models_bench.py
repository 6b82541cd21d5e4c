"""`pagedllm bench models` (issue 7): the family configs, the ratios, and a tiny end-to-end run."""
import json

import pytest

from pagedllm.benchmarks import models as bench
from pagedllm.entrypoints.cli import main


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "models", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: pagedllm bench models" in out
    for flag in ("--families", "--num-prompts", "--output-len", "--repeat", "--dtype", "--output-json", "--size", "--cache-dir"):
        assert flag in out


def test_families_put_llama_first_and_reject_unknown_names():
    assert bench.parse_families("gpt2,fallback") == ["llama", "gpt2", "fallback"]
    assert bench.parse_families("all") == ["llama", *[f for f in bench.FAMILIES if f != "llama"], "fallback"]
    with pytest.raises(ValueError, match="--families: unknown \\['gpt5'\\]"):
        bench.parse_families("llama,gpt5")


def test_ratios_are_against_the_llama_row_not_the_first_or_fastest():
    rows = {"gpt2": {"output_tokens_per_s": 300.0}, "opt": {"output_tokens_per_s": 150.0},
            "llama": {"output_tokens_per_s": 200.0}, "phi": {"error": "boom"},
            "llama_mha": {"output_tokens_per_s": 100.0}, "mixtral_active": {"output_tokens_per_s": 100.0},
            "fallback": {"output_tokens_per_s": 50.0}}
    bench.add_ratios(rows)
    assert {n: r["ratio_to_llama"] for n, r in rows.items()} == {
        "gpt2": 1.5, "opt": 0.75, "llama": 1.0, "phi": None, "llama_mha": 0.5, "mixtral_active": 0.5,
        "fallback": 0.25}
    # 0.8 bound for native families; fallback and control rows reported, not judged; a failed row is not a pass
    assert {n: r["meets_target"] for n, r in rows.items()} == {
        "gpt2": True, "opt": False, "llama": True, "phi": None, "llama_mha": None, "mixtral_active": None,
        "fallback": None}


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
    """gpt2, llama and the llama_mha control (tiny), 2 requests x 3 tokens, 2 rounds: same tokens per
    row; ratio = row / llama; the control is reported, not judged."""
    out_json = tmp_path / "models.json"
    argv = ["bench", "models", "--size", "tiny", "--families", "gpt2,llama,llama_mha", "--num-prompts", "2",
            "--output-len", "3", "--repeat", "2", "--dtype", "float32", "--cache-dir", str(tmp_path / "cache"),
            "--output-json", str(out_json)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    rows = report["results"]
    assert list(rows) == ["llama", "gpt2", "llama_mha"] and report["reference"] == "llama"
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
    assert rows["gpt2"]["meets_target"] == (rows["gpt2"]["ratio_to_llama"] >= 0.8)
    assert rows["llama_mha"]["meets_target"] is None
    assert report["fallback_ratio"] is None  # not asked for
    assert bench.format_table(report) in printed
    # one complete cached folder per family, no half-built leftovers
    cached = sorted((tmp_path / "cache").iterdir())
    assert [p.name.split("-")[0] for p in cached] == ["gpt2", "llama", "llama_mha"]
    assert all((p / bench.META_FILE).exists() and ".tmp" not in p.name for p in cached)
