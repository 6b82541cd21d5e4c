"""One source for engine arguments: every EngineConfig field is exactly one flag on every engine command,
with the field's default; vLLM's flag names stay; docs/engine_args.md is the same table."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from pagedllm.config import EngineConfig
from pagedllm.entrypoints import cli_args
from pagedllm.entrypoints.cli import build_parser
from pagedllm.entrypoints.openai import api_server

# Commands that build an engine, with what they leave out on purpose (bench models sets those per row).
ENGINE_COMMANDS = {
    ("serve",): (), ("chat",): (), ("demo",): (), ("generate",): (),
    ("bench", "throughput"): (), ("bench", "adapters"): (), ("bench", "models"): ("model_impl", "trust_remote_code"),
}
# Written out by hand from vLLM's docs and this project's README: the spellings users type.
VLLM_FLAGS = ("--model", "--served-model-name", "--tokenizer", "--tokenizer-mode", "--trust-remote-code",
              "--dtype", "--max-model-len", "--seed", "--download-dir", "--revision", "--tokenizer-revision",
              "--block-size", "--max-num-seqs", "--max-num-batched-tokens", "--enable-prefix-caching",
              "--no-enable-prefix-caching", "--enable-chunked-prefill", "--gpu-memory-utilization",
              "--kv-cache-memory", "--swap-space", "--enforce-eager", "--device", "--tensor-parallel-size", "-tp",
              "--pipeline-parallel-size", "-pp", "--quantization", "-q", "--disable-log-stats", "--model-impl")


def subparser(words: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def server_module_parser() -> argparse.ArgumentParser:
    """``python -m pagedllm.entrypoints.openai.api_server``'s parser (``main`` builds the same)."""
    return api_server.add_serve_args(argparse.ArgumentParser(), positional_model=False)


def parsers():
    yield from ((" ".join(w), subparser(w), skip) for w, skip in ENGINE_COMMANDS.items())
    yield "python -m ...openai.api_server", server_module_parser(), ()


def check_one_flag_per_field(parser: argparse.ArgumentParser, skip: tuple[str, ...]) -> list[str]:
    """Problems: a field without its flag, with two, under another name, or with another default."""
    problems = []
    for field in dataclasses.fields(EngineConfig):
        actions = [a for a in parser._actions if a.dest == field.name and a.option_strings]
        if field.name in skip:
            if actions:
                problems.append(f"{field.name}: set per row, yet has a flag")
            continue
        if len(actions) != 1:
            problems.append(f"{field.name}: {len(actions)} flags")
            continue
        (action,) = actions
        if "--" + field.name.replace("_", "-") not in action.option_strings:
            problems.append(f"{field.name}: flag spelled {action.option_strings}")
        if field.default is not dataclasses.MISSING and action.default != field.default:
            problems.append(f"{field.name}: flag default {action.default!r} != field default {field.default!r}")
    return problems


@pytest.mark.parametrize("name,parser,skip", list(parsers()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_field_has_exactly_one_flag_and_the_defaults_agree(name, parser, skip):
    assert check_one_flag_per_field(parser, skip) == []
    # No engine-looking flag outside the fields: a hand-added duplicate would show up here.
    names = {f.name for f in dataclasses.fields(EngineConfig)}
    engine_group = next(g for g in parser._action_groups if g.title == "engine")
    assert {a.dest for a in engine_group._group_actions} == names - set(skip)


def test_the_check_catches_a_field_without_a_flag_and_a_changed_default():
    """The check above can fail: a parser missing a field's flag, or with another default, is reported."""
    missing = argparse.ArgumentParser()
    cli_args.add_engine_args(missing, skip=("swap_space",))
    assert check_one_flag_per_field(missing, ()) == ["swap_space: 0 flags"]
    changed = argparse.ArgumentParser()
    cli_args.add_engine_args(changed)
    changed.set_defaults(max_num_batched_tokens=2048)  # what cli_args.py had before
    assert check_one_flag_per_field(changed, ()) == ["max_num_batched_tokens: flag default 2048 != field default None"]
    twice = argparse.ArgumentParser()
    cli_args.add_engine_args(twice)
    twice.add_argument("--max-tokens-per-step", dest="max_num_batched_tokens", type=int, default=None)
    assert check_one_flag_per_field(twice, ()) == ["max_num_batched_tokens: 2 flags"]


def test_vllm_flag_names_are_kept_and_listed_in_serve_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = capsys.readouterr().out
    for option in VLLM_FLAGS + ("--host", "--port", "--api-key", "--chat-template"):
        assert f"{option} " in out or f"{option}," in out or f"{option}\n" in out, option


def test_flags_reach_the_engine_config_with_their_types():
    args = build_parser().parse_args([
        "serve", "some/model", "--kv-cache-memory", "1G", "--no-enable-prefix-caching", "-tp", "1",
        "--served-model-name", "a", "b", "--max-num-batched-tokens", "512", "--gpu-memory-utilization", "0.5",
        "--swap-space", "2.5", "--enforce-eager", "--block-size", "32", "--no-disable-log-stats",
        "--model-impl", "native", "--trust-remote-code", "--tokenizer-mode", "slow"])
    kwargs = cli_args.engine_kwargs(args, model="some/model")
    expected = dict(model="some/model", kv_cache_memory=1 << 30, enable_prefix_caching=False, tensor_parallel_size=1,
                    served_model_name=["a", "b"], max_num_batched_tokens=512, gpu_memory_utilization=0.5,
                    swap_space=2.5, enforce_eager=True, block_size=32, disable_log_stats=False, model_impl="native",
                    trust_remote_code=True, tokenizer_mode="slow")
    assert {k: kwargs[k] for k in expected} == expected
    config = EngineConfig.from_kwargs(**kwargs)  # every flag is a keyword the config accepts
    assert (config.kv_cache_memory, config.served_model_name) == (1 << 30, ["a", "b"])
    assert args.model is None and args.model_tag == "some/model"


@pytest.mark.parametrize("text,value", [("2147483648", 2 << 30), ("1G", 1 << 30), ("512MiB", 512 << 20),
                                        ("8M", 8 << 20), ("1.5k", 1536)])
def test_kv_cache_memory_takes_byte_strings(text, value):
    assert build_parser().parse_args(["serve", "--kv-cache-memory", text]).kv_cache_memory == value


def test_bad_choice_names_the_flag_and_the_choices(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", "--block-size", "24"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--block-size" in err and "8, 16, 32, 64, 128" in err


def test_docs_table_is_generated_from_the_fields():
    path = Path(__file__).resolve().parents[2] / "docs" / "engine_args.md"
    assert path.read_text() == cli_args.engine_args_table(), (
        "docs/engine_args.md is stale; regenerate: .venv/bin/python -P -c 'from pagedllm.entrypoints.cli_args "
        "import engine_args_table as t; print(t(), end=\"\")' > docs/engine_args.md")
    for field in dataclasses.fields(EngineConfig):
        assert f"| `{field.name}` |" in path.read_text()
