"""ShmAllReduce (core/shm_all_reduce.py) between real processes: sums as the ranks' tensors added in rank order
(every rank the same bits), calls back to back reuse the two slot sets safely, tensors too large go to gloo,
and a dead peer is an error, not a hang. The TP parity tests (test_tensor_parallel.py) run it end to end."""
from __future__ import annotations

import multiprocessing
import os
import time

import pytest
import torch

from pagedllm import distributed, shm_all_reduce
from pagedllm.shm_all_reduce import ShmAllReduce

pytestmark = pytest.mark.skipif(not shm_all_reduce.supported(), reason="the shared-memory all-reduce is x86-only")

SHAPES = [(1, 576), (16, 576), (7, 3), (128, 1536)]


def _inputs(rank: int, call: int) -> torch.Tensor:
    shape = SHAPES[call % len(SHAPES)]
    dtype = torch.bfloat16 if call % 3 == 2 else torch.float32
    return torch.randn(shape, generator=torch.Generator().manual_seed(1000 * call + rank)).to(dtype)


def _rank_main(rank, world, path, pids, calls, results):
    shm = ShmAllReduce(rank, world, path, list(pids), timeout_s=30)
    out = []
    for call in range(calls):
        out.append(shm.all_reduce(_inputs(rank, call).clone()))
    results.put((rank, [t.float().numpy().tobytes() for t in out]))


@pytest.mark.parametrize("world", [2, 3])  # 3 ranks on 2 cores: a waiting rank must yield its core
def test_ranks_get_the_rank_order_sum_and_the_same_bits(world):
    ctx = multiprocessing.get_context("spawn")  # a forked child of a process that ran OpenMP can hang in it
    path = ShmAllReduce.create_file(world)
    results = ctx.Queue()
    pids = ctx.Array("q", world)
    procs = [ctx.Process(target=_rank_main, args=(r, world, path, pids, 40, results)) for r in range(world)]
    try:
        for r, p in enumerate(procs):
            p.start()
            pids[r] = p.pid
        got = dict(results.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            if p.pid is not None:
                p.join(30)
        os.unlink(path)
    for call in range(40):
        want = _inputs(0, call).clone()
        for r in range(1, world):
            want.add_(_inputs(r, call))
        for r in range(world):
            assert got[r][call] == want.float().numpy().tobytes(), (call, r)


def _late_rank(rank, world, path, pids):
    shm = ShmAllReduce(rank, world, path, list(pids), timeout_s=30)
    shm.all_reduce(torch.ones(4))
    os._exit(3)  # dies before the second call


def test_a_dead_peer_is_an_error_naming_it():
    ctx = multiprocessing.get_context("spawn")  # a forked child of a process that ran OpenMP can hang in it
    path = ShmAllReduce.create_file(2)
    pids = ctx.Array("q", 2)
    peer = ctx.Process(target=_late_rank, args=(1, 2, path, pids))
    try:
        pids[0] = os.getpid()
        peer.start()
        pids[1] = peer.pid
        shm = ShmAllReduce(0, 2, path, [os.getpid(), peer.pid], timeout_s=30)
        assert torch.equal(shm.all_reduce(torch.ones(4)), torch.full((4,), 2.0))
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=rf"rank 1 \(pid {peer.pid}\) is gone"):
            shm.all_reduce(torch.ones(4))
        assert time.monotonic() - started < 5
    finally:
        peer.join(30)
        os.unlink(path)


def test_what_it_takes():
    path = ShmAllReduce.create_file(2)
    try:
        shm = ShmAllReduce(0, 2, path, [os.getpid(), os.getpid()], timeout_s=1)
    finally:
        os.unlink(path)
    assert shm.takes(torch.zeros(16, 576))
    assert not shm.takes(torch.zeros(shm_all_reduce.MAX_BYTES // 4 + 1))  # too large: gloo
    assert not shm.takes(torch.zeros(8, 8)[:, :4])  # not contiguous
    assert not shm.takes(torch.zeros(4, dtype=torch.int64))


@pytest.mark.slow  # two TP=2 engines; test_tensor_parallel's default-run TP=2 case already runs through it
def test_tensor_parallel_engine_uses_it_unless_told_not_to(monkeypatch, tmp_path):
    """The driver of a TP=2 engine on this machine all-reduces in shared memory; PAGEDLLM_TP_SHM=0 keeps gloo
    (same tokens either way)."""
    from model_fixtures import make_tiny_model

    from pagedllm import LLM, SamplingParams

    if (os.cpu_count() or 1) < 2:
        pytest.skip("tensor_parallel_size=2 needs 2 CPU cores")
    path = make_tiny_model(tmp_path / "tiny", "llama")
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    tokens = {}
    for shm in ("1", "0"):
        monkeypatch.setenv("PAGEDLLM_TP_SHM", shm)
        llm = LLM(path, tensor_parallel_size=2, dtype="float32", kv_cache_memory=16 << 20)
        assert (distributed._shm is not None) == (shm == "1")
        tokens[shm] = [o.outputs[0].token_ids for o in llm.generate(["Hello", "The sky is"], params, use_tqdm=False)]
        llm.llm_engine.executor.shutdown()
        del llm
    assert tokens["1"] == tokens["0"]


def test_a_peer_that_published_and_then_exited_is_no_error(monkeypatch):
    """The race CI met: between reading which ranks are behind and asking whether they live, the peer published
    this call and exited. Its slot is in the buffer, so the call completes; a gone peer that is still behind
    fails it."""
    path = ShmAllReduce.create_file(2)
    try:
        shm = ShmAllReduce(0, 2, path, [os.getpid(), 2 ** 22 + 1], timeout_s=30)
    finally:
        os.unlink(path)

    shm.flags[0] = 2  # this rank has published calls 1 and 2

    def publishes_then_exits(pid):
        shm.flags[1] = 1
        return False

    monkeypatch.setattr(shm_all_reduce, "_alive", publishes_then_exits)
    shm._check_peers(1)  # no error
    monkeypatch.setattr(shm_all_reduce, "_alive", lambda pid: False)
    with pytest.raises(RuntimeError, match=r"rank 1 \(pid 4194305\) is gone"):
        shm._check_peers(2)
