"""Rates, the markdown table and the PNG plot, on a hand-made results report."""
import json

import pytest

from pagedllm.benchmarks.plot import load_results, plot_throughput
from pagedllm.benchmarks.throughput import format_table, rates


def fake_report() -> dict:
    counts = {"num_requests": 8, "prompt_tokens": 400, "output_tokens": 1000}
    return {
        "benchmark": "throughput", "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "dtype": "bfloat16",
        "device": "cpu", "seed": 0,
        "workload": {**counts, "prompt_len_min": 30, "prompt_len_max": 70, "output_len_min": 16, "output_len_max": 256},
        "results": {
            "pagedllm": rates({**counts, "elapsed_s": 2.0}),
            "hf": rates({**counts, "elapsed_s": 10.0, "generated_tokens": 1600, "batch_size": 32}),
        },
        "ratio_pagedllm_over_hf": 5.0,
    }


def test_rates():
    r = rates({"num_requests": 4, "prompt_tokens": 100, "output_tokens": 300, "elapsed_s": 2.0})
    assert r["requests_per_s"] == 2.0 and r["output_tokens_per_s"] == 150.0 and r["total_tokens_per_s"] == 200.0


def test_table_lists_backends_and_ratio():
    table = format_table(fake_report())
    assert "| pagedllm (greedy) | 4.00 | 500.0 | 700.0 | 2.0 |" in table
    assert "| hf (batch 32) | 0.80 | 100.0 | 140.0 | 10.0 |" in table
    assert "ratio pagedllm/hf (output tok/s): 5.00x" in table


def test_table_shows_penalties_run_and_its_share_of_greedy():
    report = fake_report()
    counts = {"num_requests": 8, "prompt_tokens": 400, "output_tokens": 1000}
    report["results"]["pagedllm"]["penalties_run"] = rates({**counts, "elapsed_s": 2.5})
    report["results"]["pagedllm"]["penalties_over_greedy"] = 0.8
    table = format_table(report)
    assert "| pagedllm (penalties) | 3.20 | 400.0 | 560.0 | 2.5 |" in table
    assert "penalties/greedy (output tok/s): 80.0%" in table


def test_table_names_the_executor_and_gives_ray_over_mp():
    report = fake_report()
    counts = {"num_requests": 8, "prompt_tokens": 400, "output_tokens": 1000}
    tp = dict(tensor_parallel_size=2, torch_threads_per_rank=1, all_reduced_bytes_per_step=2048)
    report["results"] = {
        "pagedllm_tp1": {**rates({**counts, "elapsed_s": 4.0}), "tensor_parallel_size": 1,
                         "torch_threads_per_rank": 2, "all_reduced_bytes_per_step": 0, "executor": "UniProcExecutor"},
        "pagedllm_mp": {**rates({**counts, "elapsed_s": 2.0}), **tp, "executor": "MultiprocExecutor"},
        "pagedllm": {**rates({**counts, "elapsed_s": 2.5}), **tp, "executor": "RayExecutor"},
    }
    report.update(ratio_pagedllm_over_hf=None, ratio_tp_over_tp1=1.6, ratio_ray_over_mp=0.8)
    table = format_table(report)
    assert "| pagedllm TP=2 mp (1 thread(s) per rank, 2 KiB all-reduced per step per rank) | 4.00 |" in table
    assert "| pagedllm TP=2 ray (1 thread(s) per rank, 2 KiB all-reduced per step per rank) | 3.20 |" in table
    assert "| pagedllm TP=1 (2 thread(s) per rank," in table
    assert "ratio ray/mp at TP=2 (output tok/s): 0.80x" in table


def test_table_names_the_pipeline_stages_and_their_traffic():
    report = fake_report()
    counts = {"num_requests": 8, "prompt_tokens": 400, "output_tokens": 1000}
    report["results"] = {
        "pagedllm_tp1": {**rates({**counts, "elapsed_s": 4.0}), "tensor_parallel_size": 1,
                         "torch_threads_per_rank": 2, "all_reduced_bytes_per_step": 0, "executor": "UniProcExecutor"},
        "pagedllm": {**rates({**counts, "elapsed_s": 5.0}), "tensor_parallel_size": 1, "pipeline_parallel_size": 2,
                     "torch_threads_per_rank": 1, "all_reduced_bytes_per_step": 0,
                     "stage_sent_bytes_per_step": 3072, "executor": "MultiprocExecutor"},
    }
    report.update(ratio_pagedllm_over_hf=None, ratio_tp_over_tp1=0.8, ratio_ray_over_mp=None)
    table = format_table(report)
    assert ("| pagedllm TP=1 PP=2 mp (1 thread(s) per rank, 0 KiB all-reduced per step per rank, 3 KiB sent "
            "between stages per step, all ranks) | 1.60 |") in table
    assert "ratio TP=1 PP=2/TP=1 (output tok/s): 0.80x" in table


def test_plot_writes_png(tmp_path):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(fake_report()))
    out = plot_throughput(load_results([str(p) for p in paths]), str(tmp_path / "docs" / "bench.png"))
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_rejects_other_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not a throughput results file"):
        load_results([str(bad)])
