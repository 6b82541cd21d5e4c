"""``pagedllm bench tools``: decoding speed of forced tool calls (``tool_choice="required"``: every token masked
by the call grammar) against the same prompts decoded freely, same engine, same run (issue 18: >= 0.8x).

Both runs render the same chat prompts with the same tools in them (``tokenizer.render_chat``,
as the server does) and decode greedily. A forced call is shorter than a free answer, and fewer tokens per
prompt would charge its prefill to fewer tokens: so each forced run fixes each prompt's answer length,
and the free run after it decodes exactly as many tokens per prompt (``ignore_eos``; a cached prefix can
change a greedy answer's length between runs, so the lengths are taken afresh each time). The two runs do the same
prefills and decode steps, and differ only by the grammar's masks. The rate is generated tokens per second
of wall time, best of ``--repeats`` alternating runs. The forced answers are also parsed and validated
against their functions' JSON schemas, so a fast wrong grammar cannot pass for a result; answers cut by
``max_tokens`` are counted apart.
"""
from __future__ import annotations

import argparse
import json
import random
import time

from pagedllm.benchmarks.report import load_avg, machine_info, write_json

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # bundled
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"},
                                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": {"type": "object", "properties": {
                                          "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}},
    {"type": "function", "function": {"name": "search_flights", "description": "Find flights on a day",
                                      "parameters": {"type": "object", "properties": {
                                          "origin": {"type": "string"}, "destination": {"type": "string"},
                                          "passengers": {"type": "integer", "minimum": 1, "maximum": 9}},
                                          "required": ["origin", "destination", "passengers"]}}},
]
CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Quito", "Hanoi", "Perth", "Accra", "Bern", "Rome", "Seoul"]
ASKS = ["What is the weather in {c}?", "How much is {a} plus {b}?", "Book a flight from {c} to {d} for {n}.",
        "Is it cold in {c} today?", "Add {a} and {b}.", "Flights from {c} to {d}, {n} people?"]


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="chat model (default: %(default)s, bundled)")
    parser.add_argument("--num-prompts", type=int, default=64, help="prompts per run (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per answer at most (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; best kept (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", help="engine dtype (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default: %(default)s)")
    parser.add_argument("--output-json", metavar="PATH", help="also write the results to this JSON file")
    return parser


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(ASKS).format(c=rng.choice(CITIES), d=rng.choice(CITIES), a=rng.randint(1, 99),
                                    b=rng.randint(1, 99), n=rng.randint(1, 9)) for _ in range(n)]


def _run(llm, prompt_ids: list[list[int]], params) -> tuple[list, float]:
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)
    return outputs, time.perf_counter() - start


def run_benchmark(args: argparse.Namespace) -> dict:
    import jsonschema

    from pagedllm import LLM, SamplingParams
    from pagedllm.sampling_params import StructuredOutputsParams
    from pagedllm.tokenizer import render_chat
    from pagedllm.tool_calling import forced_call_schema
    from pagedllm.tool_parsers import ForcedToolParser

    load_before = load_avg()
    llm = LLM(args.model, dtype=args.dtype, seed=args.seed)
    tokenizer = llm.get_tokenizer()
    prompt_ids = []
    for text in prompts(args.num_prompts, args.seed):
        messages = [{"role": "user", "content": text}]
        prompt_ids.append(tokenizer.encode(render_chat(tokenizer, messages, tools=TOOLS), add_special_tokens=False))
    forced = SamplingParams(temperature=0, max_tokens=args.max_tokens, frequency_penalty=0.5,
                            structured_outputs=StructuredOutputsParams(
                                json=forced_call_schema(TOOLS, parallel=True), disable_any_whitespace=True,
                                disable_additional_properties=True))
    def free_like(outs):  # as many tokens per prompt as the forced run gave it
        return [SamplingParams(temperature=0, max_tokens=len(o.outputs[0].token_ids), ignore_eos=True,
                               frequency_penalty=0.5) for o in outs]

    warm, _ = _run(llm, prompt_ids[:4], forced)  # warm-up: kernels, the grammar engine's tokenizer view
    _run(llm, prompt_ids[:4], free_like(warm))
    best = {"free": None, "forced": None}
    outputs = {}
    for _ in range(args.repeats):  # each free run follows the forced run whose lengths it copies
        outputs["forced"], seconds = _run(llm, prompt_ids, forced)
        timed = {"forced": (outputs["forced"], seconds), "free": _run(llm, prompt_ids, free_like(outputs["forced"]))}
        for name, (outs, seconds) in timed.items():
            tokens = sum(len(o.outputs[0].token_ids) for o in outs)
            if best[name] is None or tokens / seconds > best[name]["tok_s"]:
                best[name] = {"tok_s": tokens / seconds, "tokens": tokens, "seconds": seconds}
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    valid = cut = 0
    for out in outputs["forced"]:
        if out.outputs[0].finish_reason == "length":
            cut += 1
            continue
        calls = ForcedToolParser().extract_tool_calls(out.outputs[0].text).calls
        try:
            for call in calls:
                jsonschema.validate(json.loads(call.arguments), schemas[call.name])
            valid += bool(calls)
        except (jsonschema.ValidationError, KeyError):
            pass
    return {"benchmark": "tools", "model": args.model, "num_prompts": args.num_prompts,
            "max_tokens": args.max_tokens, "machine": machine_info(llm.llm_engine.device, load_before),
            "free": best["free"], "forced": best["forced"],
            "ratio": best["forced"]["tok_s"] / best["free"]["tok_s"],
            "forced_valid_calls": f"{valid}/{len(outputs['forced']) - cut}", "forced_cut_by_max_tokens": cut}


def format_table(report: dict) -> str:
    rows = [f"{'decoding':<28}{'tok/s':>10}{'tokens':>10}{'seconds':>10}"]
    for name, label in (("free", "unconstrained"), ("forced", 'tool_choice="required"')):
        r = report[name]
        rows.append(f"{label:<28}{r['tok_s']:>10.1f}{r['tokens']:>10}{r['seconds']:>10.2f}")
    rows.append(f"forced / unconstrained: {report['ratio']:.2f}x; finished forced answers that are valid calls: "
                f"{report['forced_valid_calls']} ({report['forced_cut_by_max_tokens']} cut by --max-tokens)")
    return "\n".join(rows)


def main(args: argparse.Namespace) -> int:
    report = run_benchmark(args)
    print(format_table(report))
    write_json(report, args.output_json)
    return 0
