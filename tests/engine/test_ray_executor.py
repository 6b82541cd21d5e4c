"""Tensor parallelism over Ray actors (``distributed_executor_backend="ray"``): TP=2 generates what
TP=1 generates (tokens, and logprobs within 1e-4) with half the weights on each rank; a killed
actor fails the generation naming its rank; a cluster too small fails the start at once; shutdown
leaves no actor, no placement group, and no Ray instance the engine started itself.

Ray runs in a fixture with 2 CPUs (the ranks' bundles), shut down after the module. One case is in
the default suite; the failure and shutdown cases start more engines and are ``slow``.
"""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from model_fixtures import SEED_PROMPTS, make_tiny_model
from pagedllm import LLM, SamplingParams
from pagedllm.engine.executor import WorkerDiedError
from tensor_parallel_helpers import TWO_CORES, assert_same_generation, child_pids, run

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.skipif(not TWO_CORES, reason="tensor_parallel_size=2 needs 2 CPU cores")
LONG = SamplingParams(temperature=0, max_tokens=400, ignore_eos=True)
RAY = dict(distributed_executor_backend="ray", dtype="float32", kv_cache_memory=16 << 20)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tp-ray"), "llama")  # 4 heads, 2 KV heads


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of 2 CPUs for the module; the engines join it (and leave it running)."""
    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 << 20)
    yield
    ray.shutdown()


def alive_actors() -> list[dict]:
    from ray._private import state  # the GCS's own table: no dashboard needed

    return [a for a in state.actors().values() if a["State"] != "DEAD"]


def live_placement_groups() -> list[dict]:
    return [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` ends within the time (a zombie counts as ended: Ray's raylet reaps it)."""
    from pagedllm.engine.ray_executor import _pid_alive

    deadline = time.monotonic() + within
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _pid_alive(pid)


def assert_nothing_left() -> None:
    deadline = time.monotonic() + 10  # the GCS records a killed actor's death a moment later
    while (alive_actors() or live_placement_groups()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive_actors() == [] and live_placement_groups() == []


@pytest.mark.slow
def test_an_engine_that_started_ray_shuts_it_down_with_itself(tiny_llama):
    """No cluster: the engine starts a local Ray of 2 CPUs, and `del llm` ends the actor and Ray."""
    assert not ray.is_initialized()  # runs before the module's cluster fixture starts
    llm = LLM(tiny_llama, tensor_parallel_size=2, **RAY)
    (worker,) = llm.llm_engine.executor.worker_pids
    assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2
    llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    del llm  # no garbage collection needed: nothing of the executor sits in a reference cycle
    assert not ray.is_initialized()
    assert gone(worker) and child_pids() == []  # the actor and Ray's own processes


@pytest.mark.slow
def test_an_engine_joins_the_cluster_of_ray_address_and_leaves_it_running(tiny_llama, monkeypatch):
    """A cluster started by `ray start` (2 CPUs): the engine joins it through RAY_ADDRESS, and its shutdown
    removes its actor and placement group but leaves the cluster up."""
    assert not ray.is_initialized()  # runs before the module's cluster fixture starts
    cli = os.path.join(os.path.dirname(sys.executable), "ray")
    subprocess.run([cli, "start", "--head", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, timeout=120)
    try:
        monkeypatch.setenv("RAY_ADDRESS", "auto")  # the cluster this machine started last
        llm = LLM(tiny_llama, tensor_parallel_size=2, **RAY)
        (worker,) = llm.llm_engine.executor.worker_pids
        llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
        del llm
        assert not ray.is_initialized() and gone(worker)  # the engine left the cluster, and its actor ended
        ray.init()  # the cluster is still there, with nothing of the engine's
        assert ray.cluster_resources()["CPU"] == 2
        assert_nothing_left()
        ray.shutdown()
    finally:
        subprocess.run([cli, "stop", "--force"], capture_output=True, timeout=120)


@pytest.mark.slow
def test_killed_driver_takes_its_actor_with_it(tiny_llama, tmp_path):
    """Ray's fate sharing: an actor dies with the process that owns it (here one that started Ray)."""
    script = tmp_path / "driver.py"
    script.write_text(
        "import time\n"
        "from pagedllm import LLM\n"
        f"llm = LLM({tiny_llama!r}, tensor_parallel_size=2, distributed_executor_backend='ray', dtype='float32', "
        "kv_cache_memory=16 << 20)\n"
        "print(*llm.llm_engine.executor.worker_pids, flush=True)\n"
        "time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, "-P", str(script)], stdout=subprocess.PIPE, text=True)
    ray_processes = []
    try:
        worker = int(driver.stdout.readline())
        ray_processes = descendants(driver.pid)  # the local Ray the driver started: GCS, raylet, agents
        assert worker in ray_processes and not gone(worker, within=0)
        driver.kill()
        driver.wait()
        assert gone(worker, within=20), "the actor outlived its driver"
    finally:
        driver.kill()
        for pid in ray_processes:  # Ray's node agents notice their raylet is gone only after a minute or two
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.exists(f"/proc/{parent}") else []:
            with contextlib.suppress(FileNotFoundError), open(f"/proc/{parent}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
                found += children
                todo += children
    return found


def test_tp2_over_ray_matches_tp1_and_leaves_nothing(tiny_llama, ray_cluster):
    prompts = SEED_PROMPTS[:2]
    ref, (rank0,) = run(tiny_llama, 1, prompts, 6, prompt_logprobs=1)
    got, ranks = run(tiny_llama, 2, prompts, 6, prompt_logprobs=1, distributed_executor_backend="ray")
    assert_same_generation(ref, got)
    assert len(ranks) == 2 and ranks[0]["param_bytes"] == ranks[1]["param_bytes"]
    assert all(0.45 < r["param_bytes"] / rank0["param_bytes"] < 0.55 for r in ranks), (ranks, rank0)
    assert all(r["all_reduced_bytes"] > 0 for r in ranks)
    assert_nothing_left()  # run() shut the engine down
    assert ray.is_initialized()  # the fixture's Ray is not the engine's to stop


def kill_soon(kill, delay: float = 1.0) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), kill()))
    thread.start()
    return thread


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_killed_actor_fails_the_generation_naming_the_rank(tiny_llama, ray_cluster, how):
    llm = LLM(tiny_llama, tensor_parallel_size=2, **RAY)
    executor = llm.llm_engine.executor
    (actor,), (pid,) = executor.actors, executor.worker_pids
    killer = kill_soon(lambda: ray.kill(actor) if how == "ray.kill" else os.kill(pid, signal.SIGKILL))
    started = time.monotonic()
    reason = "it was killed by `ray.kill`" if how == "ray.kill" else "its worker process has died"
    with pytest.raises(WorkerDiedError, match=rf"worker rank 1 \(Ray actor \w+, pid {pid}\) died: {reason};"):
        llm.generate(["Hello"] * 8, LONG, use_tqdm=False)  # 8 x 400 tokens: still running at the kill
    killer.join()
    assert time.monotonic() - started < 30  # an error, not a hang
    assert_nothing_left()
    with pytest.raises(WorkerDiedError, match="cannot run more steps"):  # never a silent one-rank step
        llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    del llm
    gc.collect()


@pytest.mark.slow
def test_killed_actor_fails_in_flight_async_requests(tiny_llama, ray_cluster):
    from pagedllm.config import EngineConfig
    from pagedllm.engine.async_engine import AsyncEngine, EngineDeadError

    engine = AsyncEngine(config=EngineConfig.from_kwargs(tiny_llama, tensor_parallel_size=2, **RAY))
    (actor,) = engine.engine.executor.actors
    killer = kill_soon(lambda: ray.kill(actor))
    with pytest.raises(EngineDeadError, match="WorkerDiedError.*rank 1"):
        for _ in engine.generate_sync("Hello", LONG):
            pass
    killer.join()
    assert not engine.healthy  # what /health answers 503 for
    assert_nothing_left()
    engine.shutdown()


@pytest.mark.slow
def test_more_ranks_than_the_cluster_has_fail_at_once(tiny_llama, ray_cluster):
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"tensor_parallel_size=4 with distributed_executor_backend='ray' needs 4 "
                                         r"CPUs, one bundle \{'CPU': 1\} per rank; the Ray cluster has 2 in all"):
        LLM(tiny_llama, tensor_parallel_size=4, **RAY)  # 4 heads: the model allows it, the cluster does not
    assert time.monotonic() - started < 10
    assert_nothing_left()


@pytest.mark.slow
def test_busy_cluster_fails_after_the_placement_timeout(tiny_llama, ray_cluster, monkeypatch):
    from pagedllm.engine import ray_executor

    monkeypatch.setattr(ray_executor, "PLACEMENT_TIMEOUT_S", 1.0)
    held = ray.util.placement_group([{"CPU": 1}])  # another job holds one of the 2 CPUs
    ray.get(held.ready(), timeout=30)
    try:
        with pytest.raises(ValueError, match=r"did not place 2 bundles \{'CPU': 1\} .* within 1 s: 1 of its 2 CPUs "
                                             r"are free, 1 missing"):
            LLM(tiny_llama, tensor_parallel_size=2, **RAY)
        assert [g["placement_group_id"] for g in live_placement_groups()] == [held.id.hex()]  # ours removed
    finally:
        ray.util.remove_placement_group(held)
    assert_nothing_left()


@pytest.mark.slow
def test_del_llm_leaves_no_actor_and_no_placement_group(tiny_llama, ray_cluster):
    llm = LLM(tiny_llama, tensor_parallel_size=2, **RAY)
    (pid,) = llm.llm_engine.executor.worker_pids
    assert len(alive_actors()) == 1 and len(live_placement_groups()) == 1
    llm.generate(["Hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    started = time.monotonic()
    del llm
    assert time.monotonic() - started < 3  # the actor stops when asked: no kill after a grace period
    assert_nothing_left()
    assert gone(pid)
