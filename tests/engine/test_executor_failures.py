"""What happens to a tensor-parallel engine when a process dies: a killed worker fails the in-flight
requests with an error naming the rank (no hang) and the engine stops its other workers; a killed
driver takes its workers with it; ``del llm`` leaves no process behind. Multi-process: ``slow``."""
from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from model_fixtures import make_tiny_model
from pagedllm import LLM, SamplingParams
from pagedllm.engine.executor import WorkerDiedError
from tensor_parallel_helpers import TWO_CORES, alive, child_pids

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TWO_CORES, reason="tensor_parallel_size=2 needs 2 CPU cores")]
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tp-fail"), "llama")


def kill_soon(pid: int, delay: float = 1.0) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), os.kill(pid, signal.SIGKILL)))
    thread.start()
    return thread


def test_killed_worker_fails_the_generation_and_leaves_no_process(tiny_llama):
    llm = LLM(tiny_llama, tensor_parallel_size=2, dtype="float32", kv_cache_memory=16 << 20)
    (worker,) = llm.llm_engine.executor.worker_pids
    killer = kill_soon(worker)
    started = time.monotonic()
    with pytest.raises(WorkerDiedError, match=rf"worker rank 1 \(pid {worker}\) died with exit code -9"):
        llm.generate(["Hello"] * 8, LONG, use_tqdm=False)  # 8 x 400 tokens: still running at the kill
    killer.join()
    assert time.monotonic() - started < 30  # an error, not a hang
    assert child_pids() == []
    with pytest.raises(WorkerDiedError, match="cannot run more steps"):  # never a silent one-rank step
        llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    del llm
    gc.collect()


def test_killed_worker_fails_in_flight_async_requests(tiny_llama):
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine, EngineDeadError

    engine = AsyncEngine(config=EngineConfig.from_kwargs(tiny_llama, tensor_parallel_size=2, dtype="float32",
                                                         kv_cache_memory=16 << 20))
    (worker,) = engine.engine.executor.worker_pids
    killer = kill_soon(worker)
    with pytest.raises(EngineDeadError, match="WorkerDiedError.*rank 1"):
        for _ in engine.generate_sync("Hello", LONG):
            pass
    killer.join()
    assert not engine.healthy  # what /health answers 503 for
    assert child_pids() == []
    engine.shutdown()


def test_del_llm_leaves_no_worker(tiny_llama):
    llm = LLM(tiny_llama, tensor_parallel_size=2, dtype="float32", kv_cache_memory=16 << 20)
    (worker,) = llm.llm_engine.executor.worker_pids
    assert child_pids() == [worker]
    llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    del llm  # no garbage collection needed: nothing of the executor sits in a reference cycle
    assert child_pids() == [] and not alive(worker)


def test_killed_driver_takes_its_workers_with_it(tiny_llama, tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(
        "import sys, time\n"
        "from pagedllm import LLM\n"
        f"llm = LLM({tiny_llama!r}, tensor_parallel_size=2, dtype='float32', kv_cache_memory=16 << 20)\n"
        "print(*llm.llm_engine.executor.worker_pids, flush=True)\n"
        "time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, "-P", str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(driver.stdout.readline())
        assert alive(worker)
        driver.kill()
        driver.wait()
        deadline = time.monotonic() + 20
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(worker), "the worker outlived its driver"
    finally:
        driver.kill()


def test_a_start_that_fails_after_the_workers_started_leaves_none(tiny_llama):
    with pytest.raises(ValueError, match="max_model_len=512 needs"):  # 16 KiB of KV per rank: 64 tokens
        LLM(tiny_llama, tensor_parallel_size=2, dtype="float32", kv_cache_memory=16 << 10, max_model_len=512)
    assert child_pids() == []


def test_an_error_in_the_drivers_step_stops_the_workers(tiny_llama, monkeypatch):
    """The worker waits in the LM head's all-gather the driver never reached: only stopping it ends that."""
    llm = LLM(tiny_llama, tensor_parallel_size=2, dtype="float32", kv_cache_memory=16 << 20)

    def broken(hidden):
        raise RuntimeError("planted failure in rank 0's LM head")

    monkeypatch.setattr(llm.llm_engine.runner.model, "compute_logits", broken)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="planted failure"):
        llm.generate(["Hello"], SamplingParams(max_tokens=4), use_tqdm=False)
    assert time.monotonic() - started < 30 and child_pids() == []
    with pytest.raises(WorkerDiedError, match="cannot run more steps"):
        llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
