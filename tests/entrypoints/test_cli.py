"""The pagedllm CLI: every sub-command's --help, `plugins` JSON, plugin commands, bench end to end."""
import json
import subprocess
import sys

import pytest
import torch

from pagedllm.entrypoints.cli import main
from pagedllm.plugins.hookspecs import hookimpl
from pagedllm.plugins.manager import DEFAULT_PLUGINS, load_plugins

SUBCOMMANDS = [[], ["bench"], ["bench", "throughput"], ["bench", "plot"], ["plugins"], ["demo"], ["generate"]]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "top")
def test_help(words, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*words, "--help"])
    assert exc.value.code == 0
    assert f"usage: {' '.join(['pagedllm', *words])}" in capsys.readouterr().out


def test_bench_throughput_flags(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "throughput", "--help"])
    out = capsys.readouterr().out
    for flag in ("--backend", "--num-prompts", "--seed", "--dtype", "--hf-batch-size", "--output-json"):
        assert flag in out


def test_module_entry_point():
    """`python -m pagedllm.entrypoints.cli` works (the __main__ guard)."""
    proc = subprocess.run([sys.executable, "-m", "pagedllm.entrypoints.cli", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for command in ("bench", "plugins", "demo", "generate"):
        assert command in proc.stdout


def test_plugins_prints_builtins_as_json(capsys):
    assert main(["plugins"]) == 0
    plugins = json.loads(capsys.readouterr().out)
    names = {p["name"] for p in plugins}
    assert set(DEFAULT_PLUGINS) <= names
    assert all(isinstance(p["hooks"], list) for p in plugins)


class HelloPlugin:
    @hookimpl
    def register_commands(self, subparsers):
        p = subparsers.add_parser("hello", help="say hello")
        p.add_argument("--name", default="world")
        p.set_defaults(func=lambda args: print(f"hello {args.name}") or 0)


def test_plugin_adds_a_command(capsys):
    pm = load_plugins()
    pm.register(HelloPlugin(), name="test-hello")
    try:
        assert main(["hello", "--name", "pagedllm"]) == 0
        assert capsys.readouterr().out.strip() == "hello pagedllm"
    finally:
        pm.unregister(name="test-hello")


def test_unknown_command_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory, bundled_model_path):
    """A tiny random Llama with the bundled model's tokenizer (and chat template)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-chat-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_bench_throughput_hf_end_to_end(tiny_chat_model, tmp_path, capsys):
    out_json = tmp_path / "results.json"
    assert main(["bench", "throughput", "--backend", "hf", "--model", tiny_chat_model, "--num-prompts", "5",
                 "--min-output-len", "2", "--max-output-len", "6", "--hf-batch-size", "2", "--dtype", "float32",
                 "--output-json", str(out_json)]) == 0
    assert "| hf (batch 2) |" in capsys.readouterr().out
    report = json.loads(out_json.read_text())
    hf = report["results"]["hf"]
    assert report["workload"]["num_requests"] == 5 and report["dtype"] == "float32"
    assert hf["output_tokens"] == report["workload"]["output_tokens"]
    assert 5 * 2 <= hf["output_tokens"] <= 5 * 6
    assert report["ratio_pagedllm_over_hf"] is None


@pytest.mark.slow  # builds a whole engine (~10 s here)
def test_bench_throughput_fp8_kv_reports_blocks_and_concurrency(tiny_chat_model, tmp_path, capsys):
    """--kv-cache-dtype fp8 reaches the engine; with --num-gpu-blocks-override the block count is the one asked
    for, and the room is blocks over the longest request's blocks."""
    out_json = tmp_path / "results.json"
    assert main(["bench", "throughput", "--backend", "pagedllm", "--model", tiny_chat_model, "--num-prompts", "3",
                 "--min-output-len", "2", "--max-output-len", "4", "--dtype", "float32", "--kv-cache-dtype", "fp8",
                 "--num-gpu-blocks-override", "64", "--output-json", str(out_json)]) == 0
    paged = json.loads(out_json.read_text())["results"]["pagedllm"]
    assert paged["kv_cache_dtype"] == "fp8" and paged["kv_blocks"] == 64
    assert paged["max_concurrent_seqs"] == 64 // -(-paged["longest_request_tokens"] // paged["block_size"])
    assert f"KV cache fp8: 64 blocks of {paged['block_size']} tokens" in capsys.readouterr().out


def test_bench_rejects_bad_num_prompts(tiny_chat_model):
    with pytest.raises(ValueError, match="--num-prompts"):
        main(["bench", "throughput", "--backend", "hf", "--model", tiny_chat_model, "--num-prompts", "0"])


@pytest.mark.slow  # builds a whole engine (~5-20 s here)
def test_generate_prints_the_completion(tiny_chat_model, capsys):
    assert main(["generate", "Why is the sky blue?", "--chat", "--model", tiny_chat_model, "--dtype", "float32",
                 "--max-tokens", "4", "--temperature", "0", "--max-num-seqs", "4"]) == 0
    assert capsys.readouterr().out.strip()  # a random model says something, never nothing


@pytest.mark.slow  # builds a whole engine (~5-20 s here)
def test_demo_runs_the_four_prompts(tiny_chat_model, capsys):
    assert main(["demo", "--model", tiny_chat_model, "--dtype", "float32", "--max-tokens", "3"]) == 0
    out = capsys.readouterr().out
    for prompt in ("Hello, my name is", "The president of the United States is",
                   "The capital of France is", "The future of AI is"):
        assert f"Prompt: {prompt!r}" in out
    assert "output tokens in" in out and "tok/s" in out


class _ConfigReached(Exception):
    """Raised by the patched EngineConfig.validate: the flags made it into an engine config."""


class _InlineExecutor:
    """Stands in for bench adapters' spawned worker process, so the patched config is seen."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future


@pytest.mark.parametrize("command", [
    ["generate", "Hi", "--model", "{model}"],
    ["demo", "--model", "{model}"],
    ["chat", "--model", "{model}"],
    ["serve", "{model}"],
    ["bench", "throughput", "--backend", "pagedllm", "--model", "{model}", "--num-prompts", "1"],
    ["bench", "adapters", "--model", "{model}", "--num-requests", "1"],
], ids=lambda c: " ".join(c[:2]) if c[0] == "bench" else c[0])
@pytest.mark.parametrize("impl", ["native", "transformers"])
def test_model_impl_flag_reaches_the_engine_config(command, impl, tiny_chat_model, monkeypatch):
    from pagedllm.config import EngineConfig

    seen = []

    def capture(self):
        seen.append(self)
        raise _ConfigReached

    monkeypatch.setattr(EngineConfig, "validate", capture)
    monkeypatch.setattr("pagedllm.benchmarks.adapters.ProcessPoolExecutor", _InlineExecutor)
    argv = [a.replace("{model}", tiny_chat_model) for a in command] + ["--model-impl", impl, "--trust-remote-code"]
    with pytest.raises(_ConfigReached):
        main(argv)
    assert [(c.model_impl, c.trust_remote_code, c.model) for c in seen] == [(impl, True, tiny_chat_model)]


def test_model_impl_defaults_to_auto_and_lists_the_registry_choices():
    from pagedllm.entrypoints.cli import build_parser
    from pagedllm.entrypoints.cli_args import MODEL_IMPLS
    from pagedllm.models.registry import MODEL_IMPLS as registry_impls

    assert MODEL_IMPLS == registry_impls
    assert build_parser().parse_args(["generate", "Hi"]).model_impl == "auto"
    assert build_parser().parse_args(["serve"]).model_impl == "auto"


@pytest.mark.parametrize("command", [["generate", "Hi"], ["serve"], ["bench", "throughput"], ["chat"]])
def test_model_impl_flag_rejects_an_unknown_value(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main(command + ["--model-impl", "hf"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--model-impl" in err and "'hf'" in err
    for choice in ("auto", "native", "transformers"):
        assert choice in err.split("--model-impl", 1)[1]
