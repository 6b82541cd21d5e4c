"""`bench embed`: every pagedllm row is checked against sentence-transformers' fp32 vectors, and the
table names the dtype of each row, so a bf16 speed-up cannot pass for a fp32 one."""
import argparse

import torch

from pagedllm.benchmarks import embed
from pagedllm.config import cpu_supports_bf16


def test_flags_are_documented(cli_help):
    out = cli_help("bench", "embed")
    assert "--dtype" in out and "--num-texts" in out and "--concurrency" in out


def test_auto_resolves_as_the_engine_does():
    expected = ["float32"] + (["bfloat16"] if cpu_supports_bf16() else [])
    assert embed.resolved_dtypes(None) == expected  # fp32 once even when auto is fp32
    assert embed.resolved_dtypes(["bfloat16", "bfloat16"]) == ["bfloat16"]


def test_rows_per_dtype_with_their_cosine_to_the_fp32_peer():
    args = argparse.Namespace(model=embed.DEFAULT_MODEL, num_texts=12, min_len=16, max_len=64, batch_size=32,
                              concurrency=2, skip=["served"], max_num_batched_tokens=None, seed=0,
                              dtype=["float32", "bfloat16"], output_json=None)
    report = embed.run_benchmark(args)
    rows = report["results"]
    assert set(rows) == {"pagedllm float32", "pagedllm bfloat16", "sentence-transformers float32",
                         "sentence-transformers bfloat16"}
    assert rows["pagedllm float32"]["min_cosine_to_st_fp32"] > 0.99999
    assert 0.999 < rows["pagedllm bfloat16"]["min_cosine_to_st_fp32"] < 1.0 + 1e-6
    table = embed.format_table(report)
    assert "| pagedllm bfloat16 |" in table and "vs sentence-transformers same dtype" in table
    assert torch.get_default_dtype() == torch.float32  # the bf16 runs leave the process default alone


def test_served_rows_per_client_with_their_cosine_to_offline():
    """The served rows come from a real ``pagedllm serve`` subprocess, one per load generator, and carry
    their vectors' lowest cosine to ``LLM.embed``'s: a server answering wrong vectors fails here."""
    args = argparse.Namespace(model=embed.DEFAULT_MODEL, num_texts=8, min_len=16, max_len=64, batch_size=32,
                              concurrency=2, skip=["st"], max_num_batched_tokens=None, seed=0,
                              dtype=["float32"], output_json=None)
    rows = embed.run_benchmark(args)["results"]
    served = {name: r for name, r in rows.items() if name.startswith("pagedllm served")}
    assert set(served) == {"pagedllm served float32 (aiohttp)", "pagedllm served float32 (openai SDK)"}
    for row in served.values():
        assert row["errors"] == 0 and row["min_cosine_to_offline"] > 0.99999
    table = embed.format_table({"results": rows, "num_texts": 8, "lengths": [16, 64], "tokens": 1,
                                "model": embed.DEFAULT_MODEL})
    assert "served/offline (float32, aiohttp clients)" in table
