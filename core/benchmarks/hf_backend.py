"""The Hugging Face transformers baseline: static batches through ``model.generate``.

This is what serving looks like without an engine: requests are cut into fixed batches in
arrival order, prompts are left-padded, and a batch runs until its longest request has its
``max_new_tokens`` (shorter requests ride along, wasting compute). Only the tokens each
request asked for are counted as output, so the padding and ride-along tokens count as the
cost of static batching, not as throughput. Decoding is greedy and EOS is suppressed
(``min_new_tokens``), the twin of ``ignore_eos=True`` on the pagedllm side.
"""
from __future__ import annotations

import time

import torch

from pagedllm.benchmarks.workload import SyntheticRequest

DEFAULT_HF_BATCH_SIZE = 32


def load_hf_model(path: str, dtype: torch.dtype):
    """Load a causal LM folder (config.json + weights) with transformers, in eval mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval()


def pad_token_id_for(model, tokenizer=None) -> int:
    """The id used for left padding: the tokenizer's pad token, else EOS (masked out anyway)."""
    for source in (tokenizer, getattr(model, "generation_config", None), model.config):
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(source, attr, None) if source is not None else None
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    return 0


def left_pad(batch: list[SyntheticRequest], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` for a batch, padded on the left."""
    width = max(len(r.prompt_token_ids) for r in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, request in enumerate(batch):
        n = len(request.prompt_token_ids)
        input_ids[row, width - n:] = torch.tensor(request.prompt_token_ids, dtype=torch.long)
        attention_mask[row, width - n:] = 1
    return input_ids, attention_mask


def generate_batch(model, batch: list[SyntheticRequest], pad_token_id: int) -> int:
    """Run one static batch to its longest output; return the new tokens generated per row."""
    input_ids, attention_mask = left_pad(batch, pad_token_id)
    max_new = max(r.output_len for r in batch)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new,
            min_new_tokens=max_new,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_token_id,
            use_cache=True,
        )
    return out.shape[1] - input_ids.shape[1]


def run_hf(
    model,
    requests: list[SyntheticRequest],
    batch_size: int = DEFAULT_HF_BATCH_SIZE,
    pad_token_id: int | None = None,
) -> dict:
    """Time the static-batch baseline over ``requests``; return counts and elapsed seconds.

    ``output_tokens`` is the sum of the lengths the requests asked for; ``generated_tokens``
    is what the model actually computed (rows x longest output per batch), shown for context.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (--hf-batch-size) must be an integer >= 1, got {batch_size!r}")
    if not requests:
        raise ValueError("requests must not be empty")
    if pad_token_id is None:
        pad_token_id = pad_token_id_for(model)
    generated = 0
    start = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        batch = requests[i:i + batch_size]
        new_per_row = generate_batch(model, batch, pad_token_id)
        want = max(r.output_len for r in batch)
        if new_per_row != want:
            raise RuntimeError(f"transformers generated {new_per_row} tokens per row, expected {want}")
        generated += new_per_row * len(batch)
    elapsed = time.perf_counter() - start
    return {
        "elapsed_s": elapsed,
        "num_requests": len(requests),
        "prompt_tokens": sum(len(r.prompt_token_ids) for r in requests),
        "output_tokens": sum(r.output_len for r in requests),
        "generated_tokens": generated,
        "batch_size": batch_size,
    }
