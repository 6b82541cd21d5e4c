"""Periodic engine stats in the log (vLLM's ``LoggingStatLogger``), on when ``disable_log_stats=False``.

One line every ``interval`` seconds of stepping: average prompt and generation throughput since
the last line, running and waiting requests, KV-cache usage and the prefix-cache hit rate.
"""
from __future__ import annotations

import logging
import time

logger = logging.getLogger("pagedllm.engine.stats")


class StatLogger:
    def __init__(self, interval: float, clock=time.monotonic):
        self.interval = interval
        self.clock = clock
        self.last_time = clock()
        self.last_prompt_tokens = 0
        self.last_generation_tokens = 0

    def maybe_log(self, engine) -> bool:
        """Log one line if ``interval`` has passed since the last; True when it did."""
        now = self.clock()
        elapsed = now - self.last_time
        if elapsed < self.interval:
            return False
        stats, blocks, scheduler = engine.stats, engine.block_manager, engine.scheduler
        prompt = stats.prompt_tokens - self.last_prompt_tokens
        generation = stats.generation_tokens - self.last_generation_tokens
        hit_rate = blocks.prefix_hits / blocks.prefix_queries if blocks.prefix_queries else 0.0
        logger.info("Avg prompt throughput: %.1f tokens/s, Avg generation throughput: %.1f tokens/s, "
                    "Running: %d reqs, Waiting: %d reqs, KV cache usage: %.1f%%, Prefix cache hit rate: %.1f%%",
                    prompt / max(elapsed, 1e-9), generation / max(elapsed, 1e-9), len(scheduler.running),
                    len(scheduler.waiting), blocks.usage * 100, hit_rate * 100)
        self.last_time = now
        self.last_prompt_tokens, self.last_generation_tokens = stats.prompt_tokens, stats.generation_tokens
        return True
