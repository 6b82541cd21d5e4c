"""Shared by the tensor-parallel tests (``tests/engine``, ``tests/models``): run an engine at TP=1 or
TP=2 and compare, list this process's children, save a tiny random model."""
from __future__ import annotations

import os
import zlib

from model_fixtures import save_random_model
from pagedllm import LLM, SamplingParams

TWO_CORES = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) >= 2
LOGPROB_TOLERANCE = 1e-4


def child_pids() -> list[int]:
    """This process's live children (a worker left behind would be one), but multiprocessing's resource
    tracker: the first spawn-context pool of the session (bench models/adapters) starts it, and it lives
    as long as this process."""
    return [c for c in children(os.getpid()) if not _is_resource_tracker(c)]


def children(pid: int) -> list[int]:
    """The live (or not yet reaped) children of ``pid``, from /proc."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found += [int(c) for c in f.read().split()]
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"multiprocessing.resource_tracker" in f.read()
    except OSError:  # ended meanwhile
        return False


def save_model(path, config) -> str:
    """A tiny random HF model of ``config``, seeded by its class (each architecture its own weights)."""
    return save_random_model(path, config, seed=zlib.crc32(type(config).__name__.encode()))


def run(path: str, tp: int, prompts, max_tokens: int, prompt_logprobs: int | None = None, **engine_args):
    """Greedy outputs of an engine with ``tp`` ranks, its per-rank stats, then the engine shut down."""
    llm = LLM(path, dtype="float32", kv_cache_memory=16 << 20, tensor_parallel_size=tp, **engine_args)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=1,
                            prompt_logprobs=prompt_logprobs)
    outs = llm.generate(prompts, params, use_tqdm=False)
    stats = llm.llm_engine.executor.stats()
    llm.llm_engine.shutdown()
    return outs, stats


def assert_same_generation(reference, got) -> float:
    """Same tokens; logprobs of the chosen tokens within tolerance. Returns the largest logprob difference."""
    worst = 0.0
    for ref, out in zip(reference, got):
        a, b = ref.outputs[0], out.outputs[0]
        assert b.token_ids == a.token_ids, ref.prompt
        for ids, pos_ref, pos_got in zip(a.token_ids, a.logprobs, b.logprobs):
            worst = max(worst, abs(pos_ref[ids].logprob - pos_got[ids].logprob))
        for k, (p_ref, p_got) in enumerate(zip(ref.prompt_logprobs or [], out.prompt_logprobs or [])):
            if p_ref is None:
                continue
            token = ref.prompt_token_ids[k]
            worst = max(worst, abs(p_ref[token].logprob - p_got[token].logprob))
    assert worst <= LOGPROB_TOLERANCE, worst
    return worst


def assert_flat_decode_is_the_modules(path: str, tp: int, prompts, **engine_args) -> None:
    """Every rank's decode steps on its flat plan (``LlamaCpuDecode``) against ``enforce_eager=True`` (the
    modules on every rank): the plan on each rank only without it, same tokens, every logprob equal to the bit."""
    eager, ranks = run(path, tp, prompts, 12, enforce_eager=True, **engine_args)
    assert [r["cpu_decode"] for r in ranks] == [False] * len(ranks)
    flat, ranks = run(path, tp, prompts, 12, **engine_args)
    assert [r["cpu_decode"] for r in ranks] == [True] * len(ranks)
    for a, b in zip(eager, flat):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        assert [p[t].logprob for p, t in zip(b.outputs[0].logprobs, b.outputs[0].token_ids)] == \
            [p[t].logprob for p, t in zip(a.outputs[0].logprobs, a.outputs[0].token_ids)]
