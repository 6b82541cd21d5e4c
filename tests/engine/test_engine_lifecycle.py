"""Blocks are all returned after finish/abort; chunked prefill shares steps with decodes."""
import pytest
import torch

from model_fixtures import SEED_PROMPTS, hf_greedy, make_tiny_model
from pagedllm import LLM, SamplingParams
from pagedllm.sampling_params import RequestOutputKind


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


def test_no_block_leak_after_finish_and_abort(tiny_path):
    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20)
    engine = llm.llm_engine
    bm = engine.block_manager
    params = SamplingParams(temperature=0.8, max_tokens=40, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    ids = [engine.add_request(None, SEED_PROMPTS[i % 4] * (1 + i % 5), params) for i in range(12)]
    for _ in range(5):
        engine.step()
    assert bm.num_free_blocks < bm.num_blocks
    engine.abort_request(ids[::2])  # half of them, mid-flight (running and waiting ones)
    finished = set()
    while engine.has_unfinished_requests():
        finished.update(o.request_id for o in engine.step() if o.finished)
    assert finished == set(ids[1::2])
    assert bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)
    assert engine.stats.aborted_requests == 6


def test_chunked_prefill_mixes_with_decodes_and_matches_hf(tiny_path):
    from transformers import AutoModelForCausalLM

    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20, max_num_batched_tokens=24)
    engine = llm.llm_engine
    steps = []
    execute = engine.runner.execute

    def recording_execute(scheduled):
        steps.append([(s.num_new_tokens, s.seq.num_computed_tokens) for s in scheduled])
        return execute(scheduled)

    engine.runner.execute = recording_execute
    prompts = [SEED_PROMPTS[0], SEED_PROMPTS[1] * 12, SEED_PROMPTS[2]]  # the middle one needs ~5 chunks
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    # Some step ran a decode and a prefill chunk (not starting at 0) together.
    assert any(any(n == 1 for n, _ in st) and any(n > 1 and c > 0 for n, c in st) for st in steps)
    hf = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32).eval()
    tok = llm.get_tokenizer()
    for prompt, out in zip(prompts, outs):
        assert out.outputs[0].token_ids == hf_greedy(hf, tok.encode(prompt), 16)


def test_chat_renders_the_template(tiny_path):
    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20)
    tok = llm.get_tokenizer()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = llm.chat(messages, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert out.prompt_token_ids == tok.encode(text, add_special_tokens=False)
    direct = llm.generate({"prompt_token_ids": out.prompt_token_ids},
                          SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0]
    assert out.outputs[0].token_ids == direct.outputs[0].token_ids
    two = llm.chat([messages, messages + [{"role": "assistant", "content": "Paris"},
                                          {"role": "user", "content": "And Italy?"}]],
                   SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)
    assert len(two) == 2 and two[0].outputs[0].token_ids == out.outputs[0].token_ids[:4]


def test_short_form_kwargs_and_token_prompts(tiny_path):
    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20)
    tok = llm.get_tokenizer()
    a = llm.generate("Hello, my name is", max_tokens=5, temperature=0, use_tqdm=False)[0]
    assert len(a.outputs[0].token_ids) == 5 and a.outputs[0].finish_reason == "length"
    mixed = llm.generate([tok.encode("Hello, my name is"), "Hello, my name is"],
                         SamplingParams(max_tokens=5, temperature=0), use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == mixed[1].outputs[0].token_ids == a.outputs[0].token_ids
    assert mixed[0].prompt is None and mixed[1].prompt == "Hello, my name is"


def test_stop_token_ids_and_seeded_sampling(tiny_path):
    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20)
    greedy = llm.generate("The future of AI is", SamplingParams(temperature=0, max_tokens=10, ignore_eos=True),
                          use_tqdm=False)[0].outputs[0]
    stop_at = greedy.token_ids[3]
    out = llm.generate("The future of AI is", SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop_at]),
                       use_tqdm=False)[0].outputs[0]
    first = greedy.token_ids.index(stop_at)
    assert out.token_ids == greedy.token_ids[:first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_at
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=1234, max_tokens=12, ignore_eos=True)
    alone = llm.generate("The capital of France is", p, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)] * 3
    batch = llm.generate(["a b c", "The capital of France is", "x y", "z"], [others[0], p, others[1], others[2]],
                         use_tqdm=False)
    assert batch[1].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=99, max_tokens=12,
                                ignore_eos=True)
    assert llm.generate("The capital of France is", other_seed, use_tqdm=False)[0].outputs[0].token_ids != alone


def test_cumulative_logprob_only_when_asked(tiny_path):
    """As in vLLM V1: no logprobs requested -> no cumulative_logprob (and no log-softmax work)."""
    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20)
    plain = llm.generate("The future of AI is", SamplingParams(temperature=0, max_tokens=6), use_tqdm=False)[0]
    asked = llm.generate("The future of AI is", SamplingParams(temperature=0, max_tokens=6, logprobs=0),
                         use_tqdm=False)[0]
    assert plain.outputs[0].cumulative_logprob is None
    assert plain.outputs[0].token_ids == asked.outputs[0].token_ids
    total = sum(entry[t].logprob for t, entry in zip(asked.outputs[0].token_ids, asked.outputs[0].logprobs))
    assert abs(asked.outputs[0].cumulative_logprob - total) < 1e-4


def test_chat_shows_tools_to_a_template_without_them(tiny_path):
    """The bundled chat template has no tools section: ``LLM.chat(tools=...)`` describes them in the system
    message, as the server and ChatVLLM do, instead of dropping them silently."""
    from pagedllm.tool_calling import template_renders_tools

    llm = LLM(tiny_path, dtype="float32", kv_cache_memory=16 << 20)
    assert not template_renders_tools(llm.get_tokenizer().chat_template)
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                             "parameters": {"type": "object",
                                                            "properties": {"city": {"type": "string"}}}}}
    messages = [{"role": "user", "content": "Weather in Oslo?"}]
    params = SamplingParams(temperature=0, max_tokens=2)
    with_tools = llm.chat(messages, params, tools=[tool], use_tqdm=False)[0].prompt
    without = llm.chat(messages, params, use_tqdm=False)[0].prompt
    assert "get_weather" in with_tools and "Current weather in a city" in with_tools and '"city"' in with_tools
    assert "get_weather" not in without and "Weather in Oslo?" in with_tools
