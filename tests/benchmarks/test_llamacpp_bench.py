"""`bench llamacpp`: llama.cpp's tools are found (or the message says how to build them), llama-bench's JSON is
read into pp/tg rates, llama-server gets a context of one workload request per slot, and a short run against
the real binaries (when built) fills every figure of the table."""
import json
import os
import stat

import pytest

from pagedllm.benchmarks import llamacpp, llamacpp_build
from pagedllm.entrypoints.cli_args import ArgumentParser


def test_flags_are_documented(cli_help):
    out = cli_help("bench", "llamacpp")
    for flag in ("--build", "--part", "--threads", "--gen-tokens", "--parallel", "--no-dense", "--plot"):
        assert flag in out


def _executable(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_binaries_found_in_the_cache_or_the_named_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("PAGEDLLM_LLAMACPP_BIN", raising=False)
    monkeypatch.setenv("PAGEDLLM_LLAMACPP_CACHE", str(tmp_path / "cache"))
    assert llamacpp_build.find_binary("llama-bench") is None
    bin_dir = tmp_path / "cache" / "0.3.36" / "build" / "bin"
    bin_dir.mkdir(parents=True)
    built = _executable(bin_dir / "llama-bench")
    (bin_dir / "llama-server").write_text("not executable")
    assert llamacpp_build.find_binary("llama-bench") == built
    assert llamacpp_build.find_binary("llama-server") is None
    monkeypatch.setenv("PAGEDLLM_LLAMACPP_BIN", str(tmp_path))  # the named folder wins, and has none
    assert llamacpp_build.find_binary("llama-bench") is None


def test_missing_tools_say_how_to_build_them(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGEDLLM_LLAMACPP_BIN", str(tmp_path))
    with pytest.raises(SystemExit, match="llama-bench, llama-server not found: run `pagedllm bench llamacpp --build`"):
        llamacpp.find_tools(build=False)


def _record(n_prompt, n_gen, avg_ts):
    return {"build_commit": "0c1e570", "build_number": 1, "cpu_info": "cpu", "n_threads": 2, "model_type": "llama",
            "n_prompt": n_prompt, "n_gen": n_gen, "avg_ts": avg_ts, "stddev_ts": avg_ts / 10}


def test_llama_bench_json_read_into_prompt_and_generation_rates():
    out = llamacpp.parse_llama_bench(json.dumps([_record(16, 0, 900.5), _record(0, 128, 141.25)]))
    assert out["pp"]["tok_s"] == 900.5 and out["pp"]["label"] == "pp16"
    assert out["tg"]["tok_s"] == 141.25 and out["tg"]["label"] == "tg128" and out["tg"]["stddev_tok_s"] == 14.125
    assert out["build_commit"] == "0c1e570" and out["n_threads"] == 2
    with pytest.raises(ValueError, match="no generation record"):
        llamacpp.parse_llama_bench(json.dumps([_record(16, 0, 900.5)]))


def test_commands_use_the_same_threads_and_one_request_of_context_per_slot():
    bench = llamacpp.llama_bench_command("llama-bench", "m.gguf", 16, 128, 2, 3)
    assert bench[bench.index("-t") + 1] == "2" and bench[bench.index("-n") + 1] == "128"
    server = llamacpp.llama_server_command("llama-server", "m.gguf", 2, 8, 300, 8080)
    assert server[server.index("-np") + 1] == "8" and server[server.index("-c") + 1] == str(8 * 300)
    assert server[server.index("-t") + 1] == "2" and "-cb" in server


def test_bad_counts_name_the_flag():
    args = llamacpp.add_cli_args(ArgumentParser()).parse_args(["--gen-tokens", "1"])
    with pytest.raises(ValueError, match="--gen-tokens must be >= 2"):
        llamacpp._check(args)


@pytest.mark.slow  # loads the bundled model three times and starts llama-server
@pytest.mark.skipif(not (llamacpp_build.find_binary("llama-bench") and llamacpp_build.find_binary("llama-server")),
                    reason="llama.cpp is not built here: `pagedllm bench llamacpp --build` builds it (tens of minutes)")
def test_short_run_against_the_built_llamacpp(tmp_path):
    args = llamacpp.add_cli_args(ArgumentParser()).parse_args(
        ["--gen-tokens", "8", "--repetitions", "1", "--prompt-len", "8", "--parallel", "2", "--num-prompts", "4",
         "--min-output-len", "4", "--max-output-len", "8", "--threads", str(min(2, os.cpu_count()))])
    report = llamacpp.run_benchmark(args)
    single, offline = report["single_stream"], report["offline"]
    assert single["llama_bench"]["tg"]["tok_s"] > 0 and single["llama_bench"]["pp"]["label"] == "pp8"
    tg = single["llama_bench"]["tg"]["tok_s"]
    assert single["ratio_pagedllm_over_llamacpp"] == single["pagedllm"]["decode_tok_s"] / tg
    assert single["pagedllm_dense"]["dequantize_gguf"] and not single["pagedllm"]["dequantize_gguf"]
    wanted = offline["workload"]["output_tokens"]
    assert offline["pagedllm"]["output_tokens"] == offline["llama_server"]["output_tokens"] == wanted
    table = llamacpp.format_table(report)
    assert "llama-bench (tg8, pp8)" in table and "llama-server (-np 2 -cb" in table
    assert os.path.getsize(llamacpp.plot_report(report, str(tmp_path / "p.png"))) > 0


def test_llama_bench_that_dies_with_repacking_is_rerun_without_it(tmp_path):
    """As the AMX build does on this sandbox's CPUs: a signal with repacking on, a result with --repack 0."""
    records = json.dumps([_record(16, 0, 50.0), _record(0, 8, 20.0)])
    fake = _executable(tmp_path / "llama-bench")
    fake.write_text(f"#!/bin/sh\ncase \"$*\" in *'--repack 0'*) echo '{records}' ;; *) kill -SEGV $$ ;; esac\n")
    out = llamacpp.run_llama_bench(str(fake), "m.gguf", 16, 8, 2, 1)
    assert out["tg"]["tok_s"] == 20.0 and out["repack"] is False
    assert out["repack_note"].startswith("llama-bench died of signal 11") and out["command"].endswith("--repack 0")
    with pytest.raises(RuntimeError, match="llama-bench exited with -11"):
        llamacpp.run_llama_bench(str(fake), "m.gguf", 16, 8, 2, 1, repack="on")
