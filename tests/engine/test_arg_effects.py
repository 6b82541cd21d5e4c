"""Arguments without effect on this device warn once, naming themselves; disable_log_stats=False logs stats."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from model_fixtures import make_tiny_model
from pagedllm import config as config_module
from pagedllm.config import EngineConfig, warn_without_effect
from pagedllm.engine.stat_logger import StatLogger

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test sees a process that has warned about nothing yet."""
    monkeypatch.setattr(config_module, "_warned", set())


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "pagedllm.config"]


def test_defaults_warn_about_nothing(caplog):
    warn_without_effect(EngineConfig.from_kwargs("m"), CPU)
    warn_without_effect(EngineConfig.from_kwargs("m"), CUDA)
    assert warnings_of(caplog) == []


def test_swap_space_warns_once_naming_itself_and_issue_19(caplog):
    config = EngineConfig.from_kwargs("m", swap_space=8)
    for device in (CPU, CUDA, CPU):
        warn_without_effect(config, device)
    (message,) = warnings_of(caplog)
    assert message.startswith("swap_space=8 ") and "swap_space takes effect with issue 19" in message


@pytest.mark.parametrize("name,value", [("gpu_memory_utilization", 0.5)])
def test_gpu_only_arguments_warn_on_cpu_once(name, value, caplog):
    config = EngineConfig.from_kwargs("m", **{name: value})
    warn_without_effect(config, CPU)
    warn_without_effect(config, CPU)
    (message,) = warnings_of(caplog)
    assert message.startswith(f"{name}={value!r} ") and "no effect on cpu" in message


def test_enforce_eager_is_quiet_on_cuda_and_cpu_where_it_works(caplog):
    warn_without_effect(EngineConfig.from_kwargs("m", enforce_eager=True, gpu_memory_utilization=0.5), CUDA)
    warn_without_effect(EngineConfig.from_kwargs("m", enforce_eager=True), CPU)
    assert warnings_of(caplog) == []


def test_gpu_memory_utilization_warns_on_cuda_when_kv_cache_memory_sizes_the_cache(caplog):
    warn_without_effect(EngineConfig.from_kwargs("m", gpu_memory_utilization=0.5, kv_cache_memory=1 << 30), CUDA)
    (message,) = warnings_of(caplog)
    assert message.startswith("gpu_memory_utilization=0.5 ") and "kv_cache_memory" in message


def test_stat_logger_logs_rates_since_the_last_line_every_interval(caplog):
    now = [100.0]
    engine = SimpleNamespace(stats=SimpleNamespace(prompt_tokens=0, generation_tokens=0),
                             block_manager=SimpleNamespace(usage=0.25, prefix_hits=30, prefix_queries=120),
                             scheduler=SimpleNamespace(running=[1, 2, 3], waiting=[4]))
    logger = StatLogger(10.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="pagedllm.engine.stats")
    engine.stats.prompt_tokens, engine.stats.generation_tokens = 400, 50
    now[0] = 105.0
    assert not logger.maybe_log(engine)  # 5 s < 10 s: nothing yet
    now[0] = 110.0
    assert logger.maybe_log(engine)
    engine.stats.prompt_tokens, engine.stats.generation_tokens = 400, 250
    now[0] = 130.0
    assert logger.maybe_log(engine)
    lines = [r.getMessage() for r in caplog.records if r.name == "pagedllm.engine.stats"]
    assert lines == [
        "Avg prompt throughput: 40.0 tokens/s, Avg generation throughput: 5.0 tokens/s, Running: 3 reqs, "
        "Waiting: 1 reqs, KV cache usage: 25.0%, Prefix cache hit rate: 25.0%",
        "Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 10.0 tokens/s, Running: 3 reqs, "
        "Waiting: 1 reqs, KV cache usage: 25.0%, Prefix cache hit rate: 25.0%"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


def test_engine_warns_and_logs_stats_as_asked(tiny_path, caplog, monkeypatch):
    from pagedllm import LLM, SamplingParams

    monkeypatch.setattr("pagedllm.engine.llm_engine.STATS_LOG_INTERVAL_S", 0.0)  # a line every step
    caplog.set_level(logging.INFO, logger="pagedllm.engine.stats")
    params = SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)
    quiet = LLM(tiny_path, dtype="float32", kv_cache_memory=8 << 20, device="cpu")
    quiet.generate(["Hello"], params, use_tqdm=False)
    assert warnings_of(caplog) == []
    assert not [r for r in caplog.records if r.name == "pagedllm.engine.stats"]
    loud = LLM(tiny_path, dtype="float32", kv_cache_memory=8 << 20, device="cpu", swap_space=1,
               enforce_eager=True, disable_log_stats=False)
    out = loud.generate(["Hello"], params, use_tqdm=False)
    assert sorted(m.split("=")[0] for m in warnings_of(caplog)) == ["swap_space"]
    stats = [r.getMessage() for r in caplog.records if r.name == "pagedllm.engine.stats"]
    assert len(stats) == len(out[0].outputs[0].token_ids)  # one line per step, as the interval is 0
    assert all("Avg generation throughput" in line for line in stats)
