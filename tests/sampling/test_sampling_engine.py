"""Generation semantics on the bundled SmolLM2 model: seeds, logprobs vs transformers, n/best_of,
stop strings, min_tokens, and prompt-block sharing for n>1."""
from __future__ import annotations

import pytest
import torch

from pagedllm import SamplingParams
from pagedllm.sampling_params import RequestOutputKind

PROMPTS16 = [f"Story number {i}: once upon a time, a {w}" for i, w in enumerate(
    ["cat", "dog", "king", "robot", "girl", "boy", "ship", "tree", "wizard", "fox", "bird", "river",
     "queen", "tiger", "child", "farmer"])]


def test_seeded_request_alone_and_in_a_batch_of_16(bundled_llm_fp32):
    llm = bundled_llm_fp32
    sp = SamplingParams(temperature=1.0, top_p=0.95, seed=42, max_tokens=12)
    alone = llm.generate(PROMPTS16[3], sp, use_tqdm=False)[0].outputs[0].text
    others = [SamplingParams(temperature=0.9, max_tokens=12, top_k=40, presence_penalty=0.3) for _ in range(15)]
    batch = llm.generate(PROMPTS16, others[:3] + [sp] + others[3:], use_tqdm=False)
    assert batch[3].outputs[0].text == alone
    other_seed = llm.generate(PROMPTS16[3], SamplingParams(temperature=1.0, top_p=0.95, seed=43, max_tokens=12),
                              use_tqdm=False)[0].outputs[0].text
    assert other_seed != alone


def test_logprobs_and_prompt_logprobs_match_transformers(bundled_llm_fp32, hf_bundled_fp32):
    llm = bundled_llm_fp32
    prompt = "The capital of France is"
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, logprobs=5, prompt_logprobs=3),
                       use_tqdm=False)[0]
    comp = out.outputs[0]
    ids = out.prompt_token_ids + comp.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf_bundled_fp32(torch.tensor([ids])).logits[0].float(), dim=-1)
    P = len(out.prompt_token_ids)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == P
    for pos in range(1, P):
        entry = out.prompt_logprobs[pos]
        tok = ids[pos]
        assert tok in entry and len(entry) >= 3
        for t, lp in entry.items():
            assert abs(lp.logprob - float(ref[pos - 1, t])) < 1e-3
        assert entry[tok].rank == int((ref[pos - 1] > ref[pos - 1, tok]).sum()) + 1
    assert len(comp.logprobs) == len(comp.token_ids)
    total = 0.0
    for j, (tok, entry) in enumerate(zip(comp.token_ids, comp.logprobs)):
        row = ref[P - 1 + j]
        assert set(row.topk(5).indices.tolist()) <= set(entry)
        for t, lp in entry.items():
            assert abs(lp.logprob - float(row[t])) < 1e-3
        assert entry[tok].rank == 1  # greedy
        assert entry[tok].decoded_token == llm.get_tokenizer().decode([tok])
        total += float(row[tok])
    assert abs(comp.cumulative_logprob - total) < 1e-2


def test_n_and_best_of(bundled_llm_fp32):
    llm = bundled_llm_fp32
    out = llm.generate("Write a word:", SamplingParams(n=4, temperature=0.8, max_tokens=8, seed=7), use_tqdm=False)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    all4 = llm.generate("Write a word:", SamplingParams(n=4, best_of=4, temperature=0.8, max_tokens=8, seed=11),
                        use_tqdm=False)[0].outputs
    best2 = llm.generate("Write a word:", SamplingParams(n=2, best_of=4, temperature=0.8, max_tokens=8, seed=11),
                         use_tqdm=False)[0].outputs
    expected = sorted(all4, key=lambda c: c.cumulative_logprob, reverse=True)[:2]
    assert [c.token_ids for c in best2] == [c.token_ids for c in expected]
    assert best2[0].cumulative_logprob >= best2[1].cumulative_logprob


def test_n8_shares_the_prompt_blocks(bundled_llm_fp32):
    engine = bundled_llm_fp32.llm_engine
    bm = engine.block_manager
    bs = bm.block_size
    prompt = list(range(1000, 1000 + 6 * bs + 4))  # 6 full blocks + 4 tokens

    def peak_blocks(n: int) -> int:
        engine.block_manager.reset_prefix_cache()
        engine.add_request(f"share-{n}", prompt, SamplingParams(n=n, temperature=0.8, max_tokens=8, ignore_eos=True,
                                                                 output_kind=RequestOutputKind.FINAL_ONLY))
        peak, outs = 0, []
        while engine.has_unfinished_requests():
            outs += engine.step()
            peak = max(peak, bm.num_blocks - bm.num_free_blocks)
        assert len(outs) == 1 and len(outs[0].outputs) == n
        return peak

    one, eight = peak_blocks(1), peak_blocks(8)
    per_sample = -(-(4 + 8) // bs)  # own partial prompt block + generated tokens
    assert one == -(-(len(prompt) + 8) // bs)
    assert eight - one <= 7 * per_sample  # not 7 more copies of the 6 full prompt blocks
    assert bm.num_blocks - bm.num_free_blocks == 0


def _greedy(llm, prompt, **kw):
    return llm.generate(prompt, SamplingParams(temperature=0, **kw), use_tqdm=False)[0].outputs[0]


def test_stop_string_spanning_two_tokens(bundled_llm_fp32):
    llm = bundled_llm_fp32
    tok = llm.get_tokenizer()
    prompt = "The capital of France is"
    full = _greedy(llm, prompt, max_tokens=16)
    pieces = [tok.decode(full.token_ids[:i]) for i in range(len(full.token_ids) + 1)]
    # a boundary k where token k-1 ends with >=2 chars and token k starts with >=2 chars
    k = next(i for i in range(2, len(full.token_ids)) if len(pieces[i]) - len(pieces[i - 1]) >= 2
             and len(pieces[i + 1]) - len(pieces[i]) >= 2 and "\ufffd" not in pieces[i + 1])
    stop = pieces[k + 1][len(pieces[k]) - 2:len(pieces[k]) + 2]
    at = full.text.index(stop)
    out = _greedy(llm, prompt, max_tokens=16, stop=[stop])
    assert (out.text, out.finish_reason, out.stop_reason) == (full.text[:at], "stop", stop)
    out = _greedy(llm, prompt, max_tokens=16, stop=[stop], include_stop_str_in_output=True)
    assert out.text == full.text[:at + len(stop)]
    # streamed deltas never show text that the stop string later retracts
    engine = llm.llm_engine
    engine.add_request("stream-stop", prompt, SamplingParams(temperature=0, max_tokens=16, stop=[stop],
                                                             output_kind=RequestOutputKind.DELTA))
    streamed = ""
    while engine.has_unfinished_requests():
        for o in engine.step():
            streamed += o.outputs[0].text if o.outputs else ""
    assert streamed == full.text[:at]


def test_min_tokens_suppresses_eos_and_stop_tokens(bundled_llm_fp32):
    llm = bundled_llm_fp32
    tok = llm.get_tokenizer()
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=False, add_generation_prompt=True)
    ids = tok.encode(chat, add_special_tokens=False)
    free = _greedy(llm, ids, max_tokens=40)
    assert free.finish_reason == "stop" and len(free.token_ids) < 30
    forced = _greedy(llm, ids, max_tokens=40, min_tokens=len(free.token_ids) + 5)
    assert len(forced.token_ids) >= len(free.token_ids) + 5
    eos = set(llm.llm_engine.eos_token_ids)
    assert not eos & set(forced.token_ids[:len(free.token_ids) + 5])
    first = free.token_ids[0]
    stopped = _greedy(llm, ids, max_tokens=40, stop_token_ids=[first])
    assert stopped.token_ids == [first] and stopped.stop_reason == first
    later = _greedy(llm, ids, max_tokens=40, stop_token_ids=[first], min_tokens=3)
    assert len(later.token_ids) >= 3 and first not in later.token_ids[:3]
