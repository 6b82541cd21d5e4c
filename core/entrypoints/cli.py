"""The ``pagedllm`` command: ``serve``, ``chat``, ``generate``, ``bench``, ``plugins``, ``demo`` and plugin commands.

Each built-in command is one ``add_*`` function in ``BUILTIN_COMMANDS`` that adds its parser
and sets ``func``; a new built-in is one more function in that tuple.
Plugins add theirs through the ``register_commands(subparsers)`` hook and set ``func`` the
same way. Heavy imports (torch, the engine) happen inside handlers so ``--help`` stays quick.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from pagedllm.entrypoints.cli_args import DEFAULT_MODEL, ArgumentParser, add_engine_args, engine_args_problem, engine_kwargs

DEMO_PROMPTS = (
    "Hello, my name is",
    "The president of the United States is",
    "The capital of France is",
    "The future of AI is",
)


# -- bench --------------------------------------------------------------------------------

# ``pagedllm bench NAME``: (NAME, module in pagedllm.benchmarks, help, description); each module has
# add_cli_args(parser) and main(args), imported when the parser is built.
BENCHMARKS = (
    ('throughput', 'throughput', 'offline throughput: pagedllm vs transformers static batching',
     'Offline throughput of pagedllm against transformers static batching, same run and workload.'),
    ('serve', 'serve', 'streaming clients against an OpenAI-compatible server',
     'Load a running OpenAI-compatible server (pagedllm, vLLM, ...) with concurrent streaming clients; '
     'report output tok/s, TTFT and TPOT p50/p99, errors.'),
    ('adapters', 'adapters', 'LangChain ChatVLLM.ainvoke overhead vs LLM.generate',
     'N concurrent ChatVLLM.ainvoke calls against the same N requests in one LLM.generate call: output '
     'tok/s of each and their ratio (issue 5: >= 85%).'),
    ('models', 'models', "each native model family's CPU throughput vs the Llama path (issue 7)",
     "A random ~135M config of each native family (and the Llama config through the Transformers fallback) "
     "on the same workload, each in its own process: output tok/s and the ratio to Llama's (issue 7: >= "
     "0.8)."),
    ('embed', 'embed', 'embeddings: pagedllm vs sentence-transformers encode (issue 23)',
     'Texts/s of LLM.embed, sentence-transformers encode (batch 32, fp32) and a served pagedllm at '
     '--concurrency, same texts, same run.'),
    ('tools', 'tools', 'forced tool calls (the call grammar) vs free decoding, tok/s (issue 18)',
     'Generated tokens/s of tool_choice="required" decoding (every token masked by the call grammar) '
     'against the same prompts decoded freely, same run.'),
    ('llamacpp', 'llamacpp', 'pagedllm vs llama.cpp built from source, same GGUF file (issue 22)',
     'Single-stream decode tok/s against llama-bench (tgN) and offline throughput against llama-server -np '
     'N -cb with as many clients, same file, same threads, same run. --build compiles llama.cpp from the '
     'llama-cpp-python sdist first.'),
    ('step', 'step_profile', "where a single-stream decode step's time goes, per part (issue 22)",
     'Time each part of a single-stream decode step (weight kernels, attention, Python per layer, input '
     'tensors, sampling, detokenizing, engine): ms and share of the step, decode only (a 1-token run '
     'subtracted).'),
    ('plot', 'plot', 'PNG bar chart from throughput results JSON',
     'Turn throughput results JSON files into a PNG bar chart.'),
)


def add_bench_parser(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="benchmarks against named peers",
                                  description="Benchmarks; each compares pagedllm with a peer in the same run.")
    kinds = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    for name, module, help_text, description in BENCHMARKS:
        benchmark = importlib.import_module(f"pagedllm.benchmarks.{module}")
        p = kinds.add_parser(name, help=help_text, description=description)
        benchmark.add_cli_args(p)
        p.set_defaults(func=benchmark.main)


def add_plugins_parser(subparsers) -> None:
    p = subparsers.add_parser("plugins", help="list loaded plugins as JSON",
                              description="Print the loaded plugins (built-in and installed) as JSON.")
    p.set_defaults(func=run_plugins)


def run_plugins(args: argparse.Namespace) -> int:
    from pagedllm.plugins.manager import get_plugins

    print(json.dumps(get_plugins(), indent=2))
    return 0


# -- demo ---------------------------------------------------------------------------------

def add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run four sample prompts on the bundled model",
                              description="Generate from four sample prompts and report output tokens/s.")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per prompt (default: %(default)s)")
    add_engine_args(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from pagedllm import LLM, SamplingParams

    llm = LLM(**engine_kwargs(args))
    params = SamplingParams(temperature=0.8, top_p=0.95, max_tokens=args.max_tokens)
    start = time.perf_counter()
    outputs = llm.generate(list(DEMO_PROMPTS), params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    for out in outputs:
        print(f"Prompt: {out.prompt!r}\nGenerated: {out.outputs[0].text!r}\n")
    tokens = sum(len(out.outputs[0].token_ids) for out in outputs)
    print(f"{tokens} output tokens in {elapsed:.2f} s: {tokens / elapsed:.1f} tok/s "
          f"(first call on a fresh engine, {len(outputs)} prompts batched)")
    return 0


# -- generate -----------------------------------------------------------------------------

def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="complete one prompt and print the completion",
                              description="Complete one prompt and print only the completion on stdout.")
    _add_model_positional(p)
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--chat", action="store_true",
                   help="send the prompt as a user message through the model's chat template")
    _add_sampling_and_engine_args(p, max_tokens=128, max_tokens_help="most tokens to generate", temperature=0.8)
    p.set_defaults(func=run_generate)


def _add_sampling_and_engine_args(p, *, max_tokens: int, max_tokens_help: str, temperature: float) -> None:
    """--max-tokens, --temperature, --top-p and the engine's options: ``generate`` and ``chat``
    take the same sampling knobs (with their own defaults), in the same order in --help."""
    p.add_argument("--max-tokens", type=int, default=max_tokens, help=f"{max_tokens_help} (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: %(default)s)")
    add_engine_args(p, model_default=None,
                    model_help="model name, local folder or .gguf file; the same as MODEL, and wins over it")


def _add_model_positional(p) -> None:
    """``pagedllm chat MODEL`` / ``generate MODEL PROMPT``, as ``serve MODEL``; ``--model`` stays an alias."""
    p.add_argument("model_tag", nargs="?", default=None, metavar="MODEL",
                   help=f"model name, local folder or .gguf file (default: {DEFAULT_MODEL}, bundled)")


def _model(args: argparse.Namespace) -> str:
    """``--model`` wins over the positional MODEL (serve's rule); neither: the bundled model."""
    return args.model or args.model_tag or DEFAULT_MODEL


def run_generate(args: argparse.Namespace) -> int:
    from pagedllm import LLM, SamplingParams

    llm = LLM(**engine_kwargs(args, model=_model(args)))
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    if args.chat:
        (out,) = llm.chat([{"role": "user", "content": args.prompt}], params, use_tqdm=False)
    else:
        (out,) = llm.generate([args.prompt], params, use_tqdm=False)
    print(out.outputs[0].text)
    return 0


# -- serve --------------------------------------------------------------------------------

def add_serve_parser(subparsers) -> None:
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (vLLM's `vllm serve`)",
                              description="Serve MODEL over an OpenAI-compatible API on --host:--port "
                                          "(127.0.0.1:8000 by default; --host 0.0.0.0 to expose it).")
    try:
        from pagedllm.entrypoints.openai.api_server import add_serve_args, run_server
    except ImportError as exc:  # the `serve` extra is not installed
        message = f"pagedllm serve needs the server extra: pip install 'pagedllm[serve]' ({exc})"
        p.set_defaults(func=lambda args: (print(message, file=sys.stderr), 2)[1])
        return
    add_serve_args(p, positional_model=True)
    p.set_defaults(func=run_server)


# -- chat ---------------------------------------------------------------------------------

def add_chat_parser(subparsers) -> None:
    p = subparsers.add_parser("chat", help="interactive chat with a model in the terminal",
                              description="Chat with a model turn by turn (streams the reply); "
                                          "'/reset' clears the history, 'exit' or Ctrl+D quits.")
    _add_model_positional(p)
    p.add_argument("--system", default=None, help="system prompt")
    _add_sampling_and_engine_args(p, max_tokens=256, max_tokens_help="most tokens per reply", temperature=0.7)
    p.set_defaults(func=run_chat)


def run_chat(args: argparse.Namespace) -> int:
    from pagedllm import EngineConfig, SamplingParams
    from pagedllm.engine.async_engine import get_engine
    from pagedllm.sampling_params import RequestOutputKind
    from pagedllm.tokenizer import render_chat

    kwargs = engine_kwargs(args, model=_model(args))
    engine = get_engine(EngineConfig.from_kwargs(**kwargs))
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                            output_kind=RequestOutputKind.DELTA)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {kwargs['model']} ('/reset' clears the history, 'exit' or Ctrl+D quits)")
    while True:
        try:
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        if line.strip() in ("exit", "quit"):
            break
        if line.strip() == "/reset":
            history.clear()
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        text = render_chat(engine.tokenizer, system + history)
        ids = engine.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= engine.max_model_len - 1:  # keep the newest turns that fit
            history[:] = history[-1:]
            ids = engine.tokenizer.encode(render_chat(engine.tokenizer, system + history), add_special_tokens=False)
        print("assistant> " if interactive else "", end="", flush=True)
        reply = []
        for out in engine.generate_sync({"prompt_token_ids": ids}, params):
            reply.append(out.outputs[0].text)
            print(out.outputs[0].text, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(reply)})
    engine.shutdown()
    return 0


# -- the parser ---------------------------------------------------------------------------

# Built-in commands in help order.
BUILTIN_COMMANDS = (add_serve_parser, add_chat_parser, add_generate_parser, add_bench_parser, add_plugins_parser,
                    add_demo_parser)


def build_parser() -> argparse.ArgumentParser:
    """The full parser: built-in commands, then those registered by plugins (no abbreviated flags)."""
    parser = ArgumentParser(prog="pagedllm", description="pagedllm: a vLLM-style LLM inference engine.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in BUILTIN_COMMANDS:
        add(subparsers)
    try:
        from pagedllm.plugins.manager import load_plugins

        load_plugins().hook.register_commands(subparsers=subparsers)
    except Exception as exc:  # a broken plugin must not take the built-in commands down with it
        print(f"warning: plugin commands unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "func", None) is None:
        raise SystemExit(f"pagedllm {args.command}: this command did not set a handler (func)")
    problem = engine_args_problem(args)
    if problem:
        print(f"pagedllm {args.command}: cannot start: {problem}", file=sys.stderr)
        return 2
    return args.func(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
