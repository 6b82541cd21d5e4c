"""One grammar on the command line (issue 21): no abbreviated flags, MODEL positional on chat and
generate as on serve (``--model`` kept as an alias), engine-argument typos answered with a "did you mean"."""
from __future__ import annotations

import argparse

import pytest

from pagedllm.config import EngineConfig
from pagedllm.entrypoints.cli import build_parser, main
from pagedllm.entrypoints.cli_args import DEFAULT_MODEL
from pagedllm.entrypoints.openai import api_server


class _ConfigReached(Exception):
    pass


def _engine_config_of(argv, monkeypatch) -> EngineConfig:
    """The EngineConfig the command builds (stopped at validation, before any model is loaded)."""
    seen = []

    def capture(self):
        seen.append(self)
        raise _ConfigReached

    monkeypatch.setattr(EngineConfig, "validate", capture)
    with pytest.raises(_ConfigReached):
        main(argv)
    (config,) = seen
    return config


@pytest.mark.parametrize("argv", [
    ["serve", "--max-num-seq", "4"],
    ["chat", "--max-num-seq", "4"],
    ["generate", "Hi", "--max-num-seq", "4"],
    ["generate", "Hi", "--max-tok", "4"],
    ["demo", "--max-num-seq", "4"],
    ["bench", "throughput", "--max-num-seq", "4"],
])
def test_an_abbreviated_flag_is_refused(argv, capsys):
    # stock argparse takes --max-num-seq as --max-num-seqs (prefix matching); vLLM users mistype it
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_the_server_module_refuses_abbreviated_flags(capsys, monkeypatch):
    monkeypatch.setattr(api_server, "run_server", lambda args: pytest.fail(f"parsed: {args.max_num_seqs=}"))
    with pytest.raises(SystemExit):
        api_server.main(["--max-num-seq", "4"])
    assert "unrecognized arguments: --max-num-seq" in capsys.readouterr().err


def test_full_flags_still_parse():
    args = build_parser().parse_args(["serve", "m", "--max-num-seqs", "4"])
    assert args.max_num_seqs == 4


@pytest.mark.parametrize("argv,model", [
    (["chat", "some/model"], "some/model"),
    (["chat", "--model", "some/model"], "some/model"),      # the flag stays, an alias
    (["chat"], DEFAULT_MODEL),
    (["generate", "some/model", "Hi"], "some/model"),
    (["generate", "Hi", "--model", "some/model"], "some/model"),
    (["generate", "Hi"], DEFAULT_MODEL),
    (["serve", "some/model"], "some/model"),
])
def test_model_is_positional_on_chat_and_generate_like_serve(argv, model, monkeypatch):
    assert _engine_config_of(argv, monkeypatch).model == model


def test_generate_keeps_the_prompt_when_model_is_positional():
    args = build_parser().parse_args(["generate", "some/model", "Why is the sky blue?"])
    assert (args.model_tag, args.prompt) == ("some/model", "Why is the sky blue?")
    args = build_parser().parse_args(["generate", "Why is the sky blue?"])
    assert (args.model_tag, args.prompt) == (None, "Why is the sky blue?")


def test_an_unknown_engine_argument_gets_a_did_you_mean():
    from pagedllm import LLM

    with pytest.raises(TypeError) as exc:
        LLM("any-model", max_num_seq=4)
    message = str(exc.value)
    assert "'max_num_seq'" in message and "did you mean 'max_num_seqs'" in message
    assert "accepted:" in message and "gpu_memory_utilization" in message


def test_kv_cache_memory_takes_a_size_string_in_python_as_on_the_cli():
    from pagedllm.entrypoints.cli_args import parse_bytes

    assert EngineConfig.from_kwargs(model="m", kv_cache_memory="1G").kv_cache_memory == 1 << 30
    assert EngineConfig.from_kwargs(model="m", kv_cache_memory="512MiB").kv_cache_memory == 512 << 20
    assert EngineConfig.from_kwargs(model="m", kv_cache_memory="1G").kv_cache_memory == parse_bytes("1G")
    with pytest.raises(ValueError, match="kv_cache_memory='lots'"):
        EngineConfig.from_kwargs(model="m", kv_cache_memory="lots")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes("lots")
