"""`pagedllm bench adapters` end to end on a tiny random model: both paths do the same work."""
import json

import pytest

from pagedllm.benchmarks.adapters import format_table
from pagedllm.entrypoints.cli import main
from model_fixtures import make_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random Llama with the bundled tokenizer (so it has a chat template)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-adapters"))


def test_help_lists_the_flags(cli_help):
    out = cli_help("bench", "adapters")
    for flag in ("--model", "--dtype", "--num-requests", "--output-len", "--seed", "--output-json"):
        assert flag in out


def test_rejects_bad_output_len(tiny_model):
    with pytest.raises(ValueError, match="--output-len"):
        main(["bench", "adapters", "--model", tiny_model, "--output-len", "0"])


def test_end_to_end_same_tokens_and_ratio(tiny_model, tmp_path, capsys):
    """3 chat requests x 4 tokens: both paths return exactly the workload's tokens; ratio is theirs."""
    out_json = tmp_path / "adapters.json"
    assert main(["bench", "adapters", "--model", tiny_model, "--dtype", "float32", "--num-requests", "3",
                 "--output-len", "4", "--max-num-seqs", "8", "--output-json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out_json.read_text())
    peer, adapter = report["results"]["llm_generate"], report["results"]["chatvllm_ainvoke"]
    assert report["workload"]["num_requests"] == 3 and report["workload"]["output_tokens"] == 12
    assert peer["output_tokens"] == adapter["output_tokens"] == 12
    assert report["same_output_tokens"] and report["same_prompt_tokens"]
    assert peer["prompt_tokens"] == adapter["prompt_tokens"] == report["workload"]["prompt_tokens"]
    assert report["ratio_adapter_over_llm_generate"] == pytest.approx(
        adapter["output_tokens_per_s"] / peer["output_tokens_per_s"])
    assert report["meets_target"] == (report["ratio_adapter_over_llm_generate"] >= 0.85)
    assert 0 <= report["identical_texts"] <= 3
    # Both paths greedy in float32 on one tiny model: the same texts (batch invariance), and the
    # report states the target rather than whatever the code compares against.
    assert report["identical_texts"] == 3 and report["target_ratio"] == 0.85
    assert format_table(report) in printed
    assert "`ChatVLLM.ainvoke` x3" in printed and "ratio adapter/LLM.generate" in printed
