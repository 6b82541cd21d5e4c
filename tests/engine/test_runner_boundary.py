"""The runner boundary: a step returns plain, picklable data and writes nothing into sequences."""
import copy
import pickle

import pytest

from model_fixtures import SEED_PROMPTS, make_tiny_model
from pagedllm import LLM, SamplingParams
from pagedllm.engine.sequence import Sequence
from pagedllm.worker.sampler_output import PromptLogprobs, SamplerOutput, TokenLogprobs


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


def _snapshot(seq: Sequence) -> dict:
    """Every slot of the sequence, copied one level into its contents (lists, dataclasses, objects)."""
    return {name: _state(getattr(seq, name)) for name in Sequence.__slots__}


def _state(value):
    if isinstance(value, list):
        return copy.deepcopy(value)
    slots = [n for c in type(value).__mro__ for n in getattr(c, "__slots__", ())]
    if hasattr(value, "__dict__") or slots:  # metrics, params, detokenizer, group, ...
        state = dict(vars(value)) if hasattr(value, "__dict__") else {}
        state.update({n: getattr(value, n) for n in slots if hasattr(value, n)})
        return id(value), {k: copy.copy(v) if isinstance(v, (list, dict, set)) else v for k, v in state.items()}
    return value


def _assert_plain(x, where="output") -> None:
    """Only Python scalars, lists and the output records: nothing that holds a tensor or a sequence."""
    if isinstance(x, (TokenLogprobs, PromptLogprobs, SamplerOutput)):
        for f in x.__dataclass_fields__:
            _assert_plain(getattr(x, f), f"{where}.{f}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert x is None or type(x) in (int, float), f"{where} is a {type(x).__name__}"


def test_execute_returns_picklable_plain_data_and_mutates_no_sequence(tiny_path):
    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20, max_num_batched_tokens=32)
    engine = llm.llm_engine
    runner = engine.runner
    execute = runner.execute
    seen = {"steps": 0, "top": 0, "prompt": 0, "logprobs": 0}

    def checked_execute(scheduled):
        before = [_snapshot(s.seq) for s in scheduled]
        out = execute(scheduled)
        for s, snap in zip(scheduled, before):
            after = _snapshot(s.seq)
            changed = [k for k in snap if snap[k] != after[k]]
            assert not changed, f"runner.execute changed {changed} of {s.seq!r}"
        assert isinstance(out, SamplerOutput)
        _assert_plain(out)
        again = pickle.loads(pickle.dumps(out))
        assert again == out
        n = len(out.token_ids)
        assert len(out.seq_indices) == n and all(scheduled[i].samples for i in out.seq_indices)
        if out.logprobs is not None:
            assert len(out.logprobs) == n
            seen["logprobs"] += 1
        if out.top_logprobs is not None:
            assert len(out.top_logprobs) == n
            for i, tok, rec in zip(out.seq_indices, out.token_ids, out.top_logprobs):
                wants = scheduled[i].seq.params.logprobs is not None
                assert (rec is not None) == wants
                if rec is not None:
                    assert rec.token_id == tok and len(rec.top_ids) == scheduled[i].seq.params.logprobs
                    seen["top"] += 1
        for chunk in out.prompt_logprobs or []:
            seq = scheduled[chunk.seq_index].seq
            assert seq.params.prompt_logprobs is not None
            assert [e.token_id for e in chunk.entries] == \
                seq.token_ids[chunk.first_position:chunk.first_position + len(chunk.entries)]
            seen["prompt"] += len(chunk.entries)
        seen["steps"] += 1
        return out

    runner.execute = checked_execute
    long_prompt = SEED_PROMPTS[1] * 6  # chunked: prompt logprobs arrive over several steps
    params = [
        SamplingParams(temperature=0, max_tokens=6, logprobs=3, prompt_logprobs=2),
        SamplingParams(temperature=0.9, seed=7, max_tokens=6, n=2, logprobs=1, presence_penalty=0.5,
                       frequency_penalty=0.3, repetition_penalty=1.2, bad_words=["the"]),
        SamplingParams(temperature=0.8, top_k=5, max_tokens=6, min_tokens=3, stop=["."]),
    ]
    before = [copy.deepcopy(p) for p in params]
    outs = llm.generate([long_prompt, SEED_PROMPTS[0], SEED_PROMPTS[2]], params, use_tqdm=False)
    assert seen["steps"] > 3 and seen["top"] >= 6 * 3 and seen["logprobs"] > 0
    assert seen["prompt"] == len(outs[0].prompt_token_ids) - 1
    assert params == before  # the caller's SamplingParams are not written either
    assert len(outs[1].outputs) == 2


def test_seeded_generators_live_in_the_runner_and_are_released(tiny_path):
    """A finished or aborted request's generator is dropped, so a reused request id starts afresh."""
    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20)
    engine = llm.llm_engine
    params = SamplingParams(temperature=1.0, seed=11, max_tokens=12, ignore_eos=True, n=2)

    def run(request_id):
        engine.add_request(request_id, SEED_PROMPTS[3], params)
        final = None
        while engine.has_unfinished_requests():
            for out in engine.step():
                final = out
        return [c.token_ids for c in final.outputs]

    first = run("r")
    assert engine.runner.generators == {}
    assert run("r") == first
    engine.add_request("aborted", SEED_PROMPTS[3], params)
    for _ in range(3):
        engine.step()
    assert engine.runner.generators
    engine.abort_request("aborted")
    assert engine.runner.generators == {}
