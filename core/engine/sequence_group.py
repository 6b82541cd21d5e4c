"""A request that runs several sequences: ``n`` samples, or ``best_of`` of which ``n`` return.

The first sequence runs the prompt alone; once its prefill has sampled, the others are forked
from it (:meth:`BlockManager.fork`): they reference the prompt's full KV blocks and recompute
only the partial last block, so ``n=8`` costs 8 sets of generated-token blocks, not 8 prompts.
Each sibling samples its own first token (a seeded request gives sibling ``i`` seed ``seed + i``,
as vLLM does).
"""
from __future__ import annotations

import copy

from pagedllm.engine.sequence import Sequence, SequenceStatus


class SequenceGroup:
    __slots__ = ("request_id", "params", "seqs", "forked")

    def __init__(self, parent: Sequence):
        self.request_id = parent.request_id
        self.params = parent.params
        self.seqs: list[Sequence] = [parent]
        self.forked = False

    @property
    def num_samples(self) -> int:
        return self.params.num_samples

    @property
    def is_finished(self) -> bool:
        return self.forked and all(s.is_finished for s in self.seqs)

    def fork(self, block_manager, scheduler, init_seq) -> list[Sequence]:
        """Create the siblings of the (just prefilled) parent and put them straight into running.

        ``init_seq(seq)`` gives a new sequence its per-sequence state (detokenizer, grammar), as the
        engine does in ``add_request``; the request's token-id state is copied from the parent.
        """
        parent = self.seqs[0]
        self.forked = True
        num_shared = (parent.num_prompt_tokens - 1) // block_manager.block_size
        prompt = parent.token_ids[:parent.num_prompt_tokens]
        children = []
        for i in range(1, self.num_samples):
            params = parent.params
            if params.seed is not None or params.prompt_logprobs is not None:
                params = copy.copy(params)
                params.prompt_logprobs = None  # the parent reports them for the request
                if params.seed is not None:
                    params.seed = parent.params.seed + i
            child = Sequence(parent.request_id, parent.prompt, prompt, params, parent.max_tokens,
                             parent.metrics.arrival_time)
            child.index = i
            child.group = self
            child.eos_token_ids = parent.eos_token_ids
            child.bad_words_token_ids = parent.bad_words_token_ids
            child.lora_request = parent.lora_request
            child.metrics.first_scheduled_time = parent.metrics.first_scheduled_time
            child.num_cached_tokens = parent.num_cached_tokens
            init_seq(child)
            if parent.status is SequenceStatus.RUNNING and num_shared:
                block_manager.fork(parent, child, num_shared)
            child.status = SequenceStatus.RUNNING
            scheduler.running.append(child)
            children.append(child)
        self.seqs.extend(children)
        return children

    def returned(self) -> list[Sequence]:
        """The sequences to report: all of them, or the ``n`` best by cumulative logprob."""
        n = self.params.n
        if len(self.seqs) <= n:
            return self.seqs
        return sorted(self.seqs, key=lambda s: s.cumulative_logprob, reverse=True)[:n]
