"""ReplacementGather: after a pooling step the engine waits for the answered inputs' replacements, within bounds.

The unit tests drive it with a stand-in scheduler and inbox; the last test runs closed-loop clients against a
real pooling AsyncEngine (the bundled MiniLM) and checks that its steps stay full instead of alternating
full and tiny ones."""
from __future__ import annotations

import asyncio
import time

import pytest
from model_fixtures import minilm_path

from pagedllm import EngineConfig, PoolingParams
from pagedllm.engine import replacement_gather
from pagedllm.engine.async_engine import AsyncEngine
from pagedllm.engine.replacement_gather import ReplacementGather


class Scheduler:
    def __init__(self, num_unfinished: int, fills_at: int = 1 << 30):
        self.num_unfinished = num_unfinished
        self.fills_at = fills_at

    def waiting_fills_a_step(self) -> bool:
        return self.num_unfinished >= self.fills_at


def after_a_step(answered: int, left_waiting: int, seconds: float = 0.08) -> ReplacementGather:
    gather = ReplacementGather()
    gather.stepped(time.perf_counter() - seconds, answered, left_waiting)
    return gather


def arrivals(scheduler: Scheduler, every_s: float, calls: list):
    """An inbox where one request arrives every ``every_s`` seconds (none once the timeout is shorter)."""
    def drain(timeout):
        calls.append(timeout)
        if timeout < every_s:
            time.sleep(timeout)
            return 0
        time.sleep(every_s)
        scheduler.num_unfinished += 1
        return 1
    return drain


def test_waits_until_as_many_are_pending_as_were_in_flight():
    scheduler, calls = Scheduler(num_unfinished=1), []
    gather = after_a_step(answered=5, left_waiting=1)
    assert gather.wait(scheduler, arrivals(scheduler, 0.001, calls))
    assert scheduler.num_unfinished == 6 and len(calls) == 5


def test_no_wait_once_the_waiting_fill_a_step():
    scheduler, calls = Scheduler(num_unfinished=3, fills_at=4), []
    assert after_a_step(answered=16, left_waiting=0).wait(scheduler, arrivals(scheduler, 0.001, calls))
    assert scheduler.num_unfinished == 4 and len(calls) == 1


def test_a_pause_in_arrivals_ends_the_wait_within_the_bounds():
    """Nobody sends the replacements (open-loop clients, a batch request's tail): the wait ends after the
    gap, never after more than the cap past the step's end."""
    step_s = 0.2
    scheduler, calls = Scheduler(num_unfinished=1), []
    gather = ReplacementGather()
    started = time.perf_counter()
    gather.stepped(started - step_s, answered=16, left_waiting=1)
    assert gather.wait(scheduler, arrivals(scheduler, 1.0, calls))
    waited = time.perf_counter() - started
    assert scheduler.num_unfinished == 1
    assert replacement_gather.GAP_FRACTION * step_s * 0.9 <= waited <= replacement_gather.CAP_FRACTION * step_s + 0.05


def test_an_input_after_an_idle_spell_is_not_held():
    scheduler, calls = Scheduler(num_unfinished=1), []
    gather = ReplacementGather()
    gather.stepped(time.perf_counter() - 10.1, answered=16, left_waiting=0)
    gather.step_end -= 10  # the step ended ten seconds before this arrival
    assert gather.wait(scheduler, arrivals(scheduler, 0.001, calls))
    assert calls == []


def test_the_expectation_is_used_once():
    """A second wait without a step in between (the engine went idle and woke up) does not wait again."""
    scheduler, calls = Scheduler(num_unfinished=0), []
    gather = after_a_step(answered=1, left_waiting=0)
    assert gather.wait(scheduler, arrivals(scheduler, 0.001, calls)) and len(calls) == 1
    scheduler.num_unfinished = 0
    assert gather.wait(scheduler, arrivals(scheduler, 0.001, calls)) and len(calls) == 1


def test_a_stop_request_ends_the_wait():
    assert not after_a_step(answered=4, left_waiting=0).wait(Scheduler(num_unfinished=0), lambda timeout: None)


@pytest.mark.parametrize("gathered", [True, False], ids=["with the gather", "without (control)"])
def test_closed_loop_clients_get_full_steps(monkeypatch, gathered):
    """16 clients each sending its next text when the previous is answered (what `bench embed` and an
    indexing job with a concurrency limit do), with a client-side cost per answer as an HTTP server has:
    with the gather, nearly every step embeds all 16; the control (the gather switched off) shows the
    alternation of full and tiny steps that it removes, so this test can tell them apart."""
    config = EngineConfig.from_kwargs(model=minilm_path(), dtype="float32", max_model_len=256)
    engine = AsyncEngine.from_config(config)
    if not gathered:
        engine._gather = None
    sizes: list[int] = []
    engine.add_step_listener(lambda record: record.finished and sizes.append(len(record.finished)))
    text = "a sentence of about twenty tokens that an indexing job would send to its embedding model " * 2

    async def client():
        for _ in range(8):
            async for _out in engine.generate(text, PoolingParams()):
                pass
            time.sleep(0.0006)  # serialising the answer and reading the next request, holding the event loop

    async def main():
        await asyncio.gather(*(client() for _ in range(16)))

    try:
        asyncio.run(main())
    finally:
        engine.shutdown()
    steady = sizes[1:-1]
    full = sum(n >= 12 for n in steady) / len(steady)
    print("texts per step:", sizes)
    if gathered:
        assert full >= 0.8, sizes
    else:
        assert full < 0.8, sizes
