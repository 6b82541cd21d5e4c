"""AsyncEngine: callers in threads and event loops share one batch; leaving early aborts; bad input stays local."""
from __future__ import annotations

import asyncio
import threading

import pytest
from model_fixtures import make_tiny_model

from pagedllm import EngineConfig, SamplingParams
from pagedllm.engine.async_engine import AsyncEngine, get_engine
from pagedllm.sampling_params import RequestOutputKind


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("tiny-async"))
    return EngineConfig.from_kwargs(model=path, dtype="float32", kv_cache_memory=8 << 20, max_model_len=256)


@pytest.fixture(scope="module")
def engine(config):
    eng = AsyncEngine.from_config(config)
    yield eng
    eng.shutdown()


def greedy(n, kind=RequestOutputKind.DELTA):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, output_kind=kind)


def test_threads_and_async_callers_batch_together(engine):
    expected = [o for o in engine.generate_sync("Hello", greedy(6, RequestOutputKind.FINAL_ONLY))][-1]
    results = []

    def worker():
        results.append("".join(o.outputs[0].text for o in engine.generate_sync("Hello", greedy(6))))

    async def async_caller():
        return "".join([o.outputs[0].text async for o in engine.generate("Hello", greedy(6))])

    before = engine.engine.stats.max_batch_size
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()

    async def gather():
        return await asyncio.gather(*(async_caller() for _ in range(8)))

    results += asyncio.run(gather())
    for t in threads:
        t.join(60)
    assert results == [expected.outputs[0].text] * 16
    assert engine.engine.stats.max_batch_size > max(before, 1)


def test_leaving_early_aborts_and_frees_blocks(engine):
    async def main():
        gen = engine.generate("A long story", greedy(200))
        async for _ in gen:
            break
        await gen.aclose()
        task = asyncio.create_task(_consume(engine.generate("Another story", greedy(200))))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):  # aborts are applied by the engine thread at its next step
            if engine.engine.block_manager.usage == 0 and not engine.engine.has_unfinished_requests():
                return True
            await asyncio.sleep(0.01)
        return False

    aborted = engine.engine.stats.aborted_requests
    assert asyncio.run(main())
    assert engine.engine.stats.aborted_requests == aborted + 2
    sync = engine.generate_sync("Sync story", greedy(200))
    next(sync)
    sync.close()
    out = list(engine.generate_sync("after", greedy(3, RequestOutputKind.FINAL_ONLY)))
    assert out[-1].finished and len(out[-1].outputs[0].token_ids) == 3


async def _consume(gen):
    async for _ in gen:
        pass


def test_bad_request_raises_for_that_caller_only(engine):
    with pytest.raises(ValueError, match="max_model_len"):
        list(engine.generate_sync([1] * 300, greedy(2)))
    assert len(list(engine.generate_sync("fine", greedy(2)))) == 2


def test_duplicate_request_id_fails_without_aborting_the_live_request(engine):
    live = engine.generate_sync("Hello", greedy(40), request_id="dup")
    first = next(live)  # "dup" is running now
    with pytest.raises(ValueError, match="already in use"):
        list(engine.generate_sync("Other", greedy(2), request_id="dup"))
    rest = list(live)
    assert 1 + len(rest) == 40 and rest[-1].outputs[0].finish_reason == "length", first


def test_registry_shares_one_engine_per_config(config):
    a, b = get_engine(config), get_engine(config.replace())
    assert a is b
    assert get_engine(config.replace(seed=1)) is not a
    for eng in {id(e): e for e in (a, get_engine(config.replace(seed=1)))}.values():
        eng.shutdown()
