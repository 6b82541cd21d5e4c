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
    for flag in ("--families", "--num-prompts", "--output-len", "--dtype", "--output-json", "--size", "--cache-dir"):
        assert flag in out


def test_families_put_llama_first_and_reject_unknown_names():
    assert bench.parse_families("gpt2,fallback") == ["llama", "gpt2", "fallback"]
    assert bench.parse_families("all") == ["llama", *[f for f in bench.FAMILIES if f != "llama"], "fallback"]
    with pytest.raises(ValueError, match="--families: unknown \\['gpt5'\\]"):
        bench.parse_families("llama,gpt5")


def test_ratios_are_against_the_llama_row_not_the_first_or_fastest():
    rows = {"gpt2": {"output_tokens_per_s": 300.0}, "opt": {"output_tokens_per_s": 150.0},
            "llama": {"output_tokens_per_s": 200.0}, "phi": {"error": "boom"},
            "fallback": {"output_tokens_per_s": 50.0}}
    bench.add_ratios(rows)
    assert {n: r["ratio_to_llama"] for n, r in rows.items()} == {
        "gpt2": 1.5, "opt": 0.75, "llama": 1.0, "phi": None, "fallback": 0.25}
    # 0.8 bound for native rows; the fallback's ratio is reported, not judged; a failed row is not a pass
    assert {n: r["meets_target"] for n, r in rows.items()} == {
        "gpt2": True, "opt": False, "llama": True, "phi": None, "fallback": None}


def test_every_135m_config_has_about_135m_parameters():
    """SmolLM2's shape per family: 134-137M parameters; Mixtral 134-137M active, more in total."""
    import torch
    from transformers import AutoModelForCausalLM

    for family, (_, arch) in bench.FAMILIES.items():
        config = bench.family_config(family, "135m")
        assert config.architectures == [arch] and config.tie_word_embeddings
        with torch.device("meta"):
            total, active = bench.count_params(AutoModelForCausalLM.from_config(config))
        assert 134e6 <= active <= 137e6, (family, active)
        assert total == active if family != "mixtral" else total > 2.5 * active, (family, total)


def test_end_to_end_two_tiny_families(tmp_path, capsys):
    """gpt2 and llama (tiny), 2 requests x 3 tokens: same tokens per row; ratio = gpt2 / llama."""
    out_json = tmp_path / "models.json"
    argv = ["bench", "models", "--size", "tiny", "--families", "gpt2,llama", "--num-prompts", "2",
            "--output-len", "3", "--dtype", "float32", "--cache-dir", str(tmp_path / "cache"),
            "--output-json", str(out_json)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    rows = report["results"]
    assert list(rows) == ["llama", "gpt2"] and report["reference"] == "llama" and report["target_ratio"] == 0.8
    assert report["workload"]["output_tokens"] == 6 and report["same_output_tokens"] and not report["errors"]
    for name, arch in (("llama", "LlamaForCausalLM"), ("gpt2", "GPT2LMHeadModel")):
        r = rows[name]
        assert r["architecture"] == arch and r["model_impl"] == "native" and r["output_tokens"] == 6
        assert r["model_class"].startswith("pagedllm.models.")  # native, not the fallback
        assert r["params_total"] == r["params_active"] > 3e6
    assert rows["llama"]["ratio_to_llama"] == 1.0
    assert rows["gpt2"]["ratio_to_llama"] == pytest.approx(
        rows["gpt2"]["output_tokens_per_s"] / rows["llama"]["output_tokens_per_s"])
    assert rows["gpt2"]["meets_target"] == (rows["gpt2"]["ratio_to_llama"] >= 0.8)
    assert report["fallback_ratio"] is None  # not asked for
    assert bench.format_table(report) in printed
    # one complete cached folder per family, no half-built leftovers
    cached = sorted((tmp_path / "cache").iterdir())
    assert [p.name.split("-")[0] for p in cached] == ["gpt2", "llama"]
    assert all((p / bench.META_FILE).exists() and ".tmp" not in p.name for p in cached)
