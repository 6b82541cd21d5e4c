"""Prometheus metrics with vLLM's names under the ``pagedllm:`` prefix.

Dashboards built for vLLM work after a prefix change. Gauges and engine counters are read
from the engine when scraped (a collector), latencies are observed per step from the
AsyncEngine's step listener. Each app gets its own ``CollectorRegistry`` so several servers
(or tests) in one process never clash.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from pagedllm.engine.async_engine import AsyncEngine, StepRecord

PREFIX = "pagedllm:"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector:
    """Values the engine already keeps, read at scrape time (reading ints is safe under the GIL)."""

    def __init__(self, async_engine: AsyncEngine, model_name: str):
        self.async_engine = async_engine
        self.labels = {"model_name": model_name}

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(PREFIX + name, doc, labels=list(self.labels))
        g.add_metric(list(self.labels.values()), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(PREFIX + name, doc, labels=list(self.labels))
        c.add_metric(list(self.labels.values()), value)
        return c

    def collect(self):
        engine = self.async_engine.engine
        sched, bm, stats = engine.scheduler, engine.block_manager, engine.stats
        yield self._gauge("num_requests_running", "Requests in the running batch.", len(sched.running))
        yield self._gauge("num_requests_waiting", "Requests waiting to be scheduled.", len(sched.waiting))
        yield self._gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", bm.usage)
        yield self._gauge("max_batch_size", "Most sequences that sampled a token in one step.",
                          stats.max_batch_size)
        yield self._counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                            bm.prefix_queries)
        yield self._counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", bm.prefix_hits)
        yield self._counter("num_preemptions", "Requests preempted (recomputed) for lack of KV blocks.",
                            engine.num_preemptions)
        yield self._counter("prompt_tokens", "Prompt tokens prefilled (after prefix-cache hits).",
                            stats.prompt_tokens)
        yield self._counter("generation_tokens", "Tokens generated.", stats.generation_tokens)


class Metrics:
    """All ``pagedllm:*`` metrics of one server; ``render()`` is the ``/metrics`` body."""

    def __init__(self, async_engine: AsyncEngine, model_name: str):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(async_engine, model_name))
        labels = ["model_name"]

        def hist(name, doc, buckets=_LATENCY_BUCKETS):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry).labels(model_name)

        self.ttft = hist("time_to_first_token_seconds", "Time from arrival to the first token.")
        self.itl = hist("inter_token_latency_seconds", "Time between two tokens of one request.")
        self.tpot = hist("time_per_output_token_seconds", "Mean time per output token after the first.")
        self.e2e = hist("e2e_request_latency_seconds", "Time from arrival to the last token.")
        self.batch = hist("batch_size", "Sequences that sampled a token in one step (continuous batching).",
                          _BATCH_BUCKETS)
        self.success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                               labels + ["finished_reason"], registry=self.registry)
        self.model_name = model_name
        healthy = Gauge(PREFIX + "engine_healthy", "1 while the engine loop is alive.", labels,
                        registry=self.registry)
        healthy.labels(model_name).set_function(lambda: float(async_engine.healthy))
        async_engine.add_step_listener(self.on_step)

    def on_step(self, record: StepRecord) -> None:
        if record.num_generated:
            self.batch.observe(record.num_generated)
        for value in record.ttfts:
            self.ttft.observe(value)
        for value in record.itls:
            self.itl.observe(value)
        for out, e2e, tpot in record.finished:
            self.e2e.observe(e2e)
            if tpot is not None:
                self.tpot.observe(tpot)
            for c in out.outputs:
                self.success.labels(self.model_name, c.finish_reason or "unknown").inc()
        if record.num_aborted:
            self.success.labels(self.model_name, "abort").inc(record.num_aborted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
