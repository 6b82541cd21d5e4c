"""Pipeline parallelism over Ray actors: PP=2 and TP=2 x PP=2 generate what TP=1 generates (tokens, and
logprobs within 1e-4), each stage holding only its layers; a killed stage actor fails the generation
naming its rank and leaves no actor or placement group.

Ray runs in a fixture of 4 logical CPUs (one bundle per rank of TP=2 x PP=2; the machine may have fewer
cores: the ranks then share them, one thread each), shut down after the module. Every case starts
several engines: ``slow``.
"""
from __future__ import annotations

import gc
import threading
import time

import pytest

from model_fixtures import SEED_PROMPTS, make_tiny_model
from pagedllm import LLM, SamplingParams
from pagedllm.engine.executor import WorkerDiedError
from tensor_parallel_helpers import TWO_CORES, assert_same_generation, run
from test_pipeline_parallel import stage_bytes
from test_ray_executor import assert_nothing_left

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not TWO_CORES, reason="pipeline_parallel_size=2 needs 2 CPU cores")]
PROMPTS = [p * k for p, k in zip(SEED_PROMPTS, (1, 3, 5, 8))]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("pp-ray"), "llama", num_hidden_layers=3)


@pytest.fixture(scope="module")
def ray_cluster():
    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=80 << 20)
    yield
    ray.shutdown()


def test_pp2_and_tp2xpp2_over_ray_match_tp1(tiny_llama, ray_cluster):
    ref, (rank0,) = run(tiny_llama, 1, PROMPTS, 16, prompt_logprobs=1)
    got, stages = run(tiny_llama, 1, PROMPTS, 16, prompt_logprobs=1, pipeline_parallel_size=2,
                      distributed_executor_backend="ray")
    assert_same_generation(ref, got)
    assert [s["param_bytes"] for s in stages] == stage_bytes(tiny_llama, 2, tied=False)
    assert_nothing_left()
    got, ranks = run(tiny_llama, 2, PROMPTS, 16, prompt_logprobs=1, pipeline_parallel_size=2,
                     distributed_executor_backend="ray")
    assert_same_generation(ref, got)
    assert len(ranks) == 4
    assert all(r["param_bytes"] < 0.56 * stages[rank // 2]["param_bytes"] for rank, r in enumerate(ranks))
    assert_nothing_left()
    assert ray.is_initialized()  # the fixture's Ray is not the engine's to stop


def test_killed_stage_actor_fails_the_generation_naming_the_rank(tiny_llama, ray_cluster):
    llm = LLM(tiny_llama, pipeline_parallel_size=2, distributed_executor_backend="ray", dtype="float32",
              kv_cache_memory=16 << 20)
    executor = llm.llm_engine.executor
    (actor,), (pid,) = executor.actors, executor.worker_pids
    killer = threading.Thread(target=lambda: (time.sleep(1.0), ray.kill(actor)))
    killer.start()
    started = time.monotonic()
    with pytest.raises(WorkerDiedError, match=rf"worker rank 1 \(Ray actor \w+, pid {pid}\) died: it was killed"):
        llm.generate(["Hello"] * 8, SamplingParams(temperature=0, max_tokens=400, ignore_eos=True), use_tqdm=False)
    killer.join()
    assert time.monotonic() - started < 30
    assert_nothing_left()
    del llm
    gc.collect()
