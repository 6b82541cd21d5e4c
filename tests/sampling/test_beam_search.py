"""Beam search (width 4) vs transformers' generate(num_beams=4, do_sample=False, length_penalty=...)."""
from __future__ import annotations

import pytest
import torch

from pagedllm import LLM, BeamSearchParams, SamplingParams


def hf_beam(model, prompt_ids, max_new_tokens, length_penalty, eos, early_stopping=False):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=4, length_penalty=length_penalty,
                             early_stopping=early_stopping, eos_token_id=eos, pad_token_id=0, temperature=None,
                             top_p=None, top_k=None)
    gen = out[0, len(prompt_ids):].tolist()
    while gen and gen[-1] == 0 and 0 not in ([eos] if isinstance(eos, int) else eos):
        gen.pop()  # right padding of a hypothesis shorter than the longest
    return gen


@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
def test_beam_search_matches_transformers_on_bundled_model(bundled_llm_fp32, hf_bundled_fp32, length_penalty):
    llm = bundled_llm_fp32
    tok = llm.get_tokenizer()
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=False, add_generation_prompt=True)
    for ids in (tok.encode("The capital of France is"), tok.encode(chat, add_special_tokens=False)):
        eos = list(llm.llm_engine.eos_token_ids)
        ref = hf_beam(hf_bundled_fp32, ids, 10, length_penalty, eos)
        out = llm.beam_search([ids], BeamSearchParams(beam_width=4, max_tokens=10, length_penalty=length_penalty))
        best = out[0].sequences[0]
        assert best.tokens[len(ids):] == ref
        assert len(out[0].sequences) == 4


def test_beam_search_matches_transformers_on_tiny_random_models(tmp_path):
    from model_fixtures import make_tiny_model
    from transformers import AutoModelForCausalLM

    for arch in ("llama", "qwen2"):
        path = make_tiny_model(tmp_path / arch, arch, vocab_size=49152)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        llm = LLM(path, dtype="float32", kv_cache_memory=64 << 20, seed=0)
        for prompt in ([5, 17, 300, 42, 9, 1000, 77], list(range(100, 121))):
            ref = hf_beam(hf, prompt, 8, 1.0, 2)
            out = llm.beam_search([prompt], BeamSearchParams(beam_width=4, max_tokens=8))[0].sequences[0]
            assert out.tokens[len(prompt):] == ref, arch
        # the SamplingParams route (vLLM's older use_beam_search) gives the same best beam
        res = llm.generate([[5, 17, 300, 42, 9, 1000, 77]], SamplingParams(use_beam_search=True, best_of=4, n=2,
                                                                           max_tokens=8, temperature=0), use_tqdm=False)
        assert res[0].outputs[0].token_ids == hf_beam(hf, [5, 17, 300, 42, 9, 1000, 77], 8, 1.0, 2)
        assert len(res[0].outputs) == 2
