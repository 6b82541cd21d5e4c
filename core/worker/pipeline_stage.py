"""One step through the pipeline stages, in micro-batches (pipeline parallelism, issue 17).

The driver splits a step's batch into micro-batches by sequences (``split_microbatches``: contiguous
runs of the decodes-first order, about equal in tokens) and sends all of them to every rank at once.
Every rank then runs ``run_stage``: for each micro-batch in turn, the first stage embeds its tokens,
a later stage receives the previous stage's tensors (``torch.distributed`` recv from the same TP rank
one stage up), runs its own layers and starts sending the result down without waiting for it
(isend). So stage s works on micro-batch i while stage s+1 works on micro-batch i-1: with M
micro-batches and P stages a step takes M + P - 1 micro-batch slots instead of M x P. The last stage
computes the logits of the rows the driver asked for (sampled positions, prompt-logprob positions),
and its TP rank 0 sends them, in the model's dtype, to the driver, which samples (as with tensor parallelism,
only the driver samples: it holds the sequences, generators and the sampler).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedllm import distributed


@dataclass(slots=True)
class MicroBatch:
    """What every stage needs of one micro-batch (sent to the workers as is)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: object  # AttentionMetadata; each rank prepares its backend state itself
    logit_rows: torch.Tensor  # rows of this micro-batch whose logits the driver needs (int64)


def split_microbatches(num_tokens: list[int], count: int) -> list[range]:
    """``count`` (at most one per sequence) contiguous index ranges of about equal token totals."""
    count = max(1, min(count, len(num_tokens)))
    total = sum(num_tokens)
    bounds, seen, start = [], 0, 0
    for i, n in enumerate(num_tokens):
        seen += n
        left = len(num_tokens) - i - 1  # sequences after this one
        wanted = len(bounds) + 1
        if wanted < count and (seen >= total * wanted / count or left == count - wanted):
            bounds.append(range(start, i + 1))
            start = i + 1
    bounds.append(range(start, len(num_tokens)))
    return bounds


@torch.inference_mode()
def run_stage(runner, microbatches: list[MicroBatch]) -> None:
    """This rank's stage (``runner``: its ``ModelRunner``) over every micro-batch of the step (see the module
    docstring); their metadata prepared for the attention backend already."""
    model, hidden_size, dtype, device = runner.model, runner.hidden_size, runner.dtype, runner.device
    rank, tp = distributed.get_world_rank(), distributed.get_tp_world_size()
    stage, stages = distributed.get_pp_rank(), distributed.get_pp_world_size()
    carry = getattr(model, model.body_name).pp_carry
    in_flight = []  # (work, tensor): a tensor must live until its send completes
    for i, mb in enumerate(microbatches):
        intermediate = None
        if stage > 0:
            shape = (carry, mb.input_ids.shape[0], hidden_size)
            intermediate = distributed.pp_recv(shape, dtype, device, rank - tp, tag=i).unbind(0)
        out = runner.forward(mb.input_ids, mb.positions, mb.metadata, intermediate)
        if stage < stages - 1:
            stacked = torch.stack(out)
            in_flight.append((distributed.pp_send(stacked, rank + tp, tag=i), stacked))
        elif len(mb.logit_rows):
            logits = model.compute_logits(out[mb.logit_rows.to(device)]).to(dtype)  # every TP rank joins the gather
            if distributed.get_tp_rank() == 0:
                in_flight.append((distributed.pp_send(logits, 0, tag=i), logits))
    for work, _ in in_flight:
        work.wait()


def receive_logits(microbatches: list[MicroBatch], vocab_size: int, dtype: torch.dtype,
                   device: torch.device) -> list[torch.Tensor]:
    """On the driver: each micro-batch's logits from the last stage's TP rank 0, in the model's dtype (the LM
    head's own: the sampler widens them to float32 as at one rank; half the bytes of float32 at bf16)."""
    last = (distributed.get_pp_world_size() - 1) * distributed.get_tp_world_size()
    return [distributed.pp_recv((len(mb.logit_rows), vocab_size), dtype, device, last, tag=i)
            if len(mb.logit_rows) else torch.empty(0, vocab_size, dtype=dtype, device=device)
            for i, mb in enumerate(microbatches)]
