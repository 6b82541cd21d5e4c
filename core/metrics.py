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
from pagedllm.outputs import RequestOutput

PREFIX = "pagedllm:"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0, 160.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector:
    """Values the engines already keep, read at scrape time (reading ints is safe under the GIL): one
    sample per served model in each family, labelled ``model_name``."""

    def __init__(self):
        self.engines: list[tuple[AsyncEngine, str]] = []

    def _family(self, kind, name: str, doc: str, read) -> GaugeMetricFamily | CounterMetricFamily:
        family = kind(PREFIX + name, doc, labels=["model_name"])
        for async_engine, model_name in self.engines:
            family.add_metric([model_name], read(async_engine.engine))
        return family

    def collect(self):
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        yield self._family(gauge, "num_requests_running", "Requests in the running batch.",
                           lambda e: len(e.scheduler.running))
        yield self._family(gauge, "num_requests_waiting", "Requests waiting to be scheduled.",
                           lambda e: len(e.scheduler.waiting))
        yield self._family(gauge, "kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).",
                           lambda e: e.block_manager.usage)
        yield self._family(gauge, "max_batch_size", "Most sequences that sampled a token in one step.",
                           lambda e: e.stats.max_batch_size)
        yield self._family(counter, "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                           lambda e: e.block_manager.prefix_queries)
        yield self._family(counter, "prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                           lambda e: e.block_manager.prefix_hits)
        yield self._family(counter, "num_preemptions", "Requests preempted (recomputed) for lack of KV blocks.",
                           lambda e: e.num_preemptions)
        yield self._family(counter, "prompt_tokens", "Prompt tokens prefilled (after prefix-cache hits).",
                           lambda e: e.stats.prompt_tokens)
        yield self._family(counter, "generation_tokens", "Tokens generated.", lambda e: e.stats.generation_tokens)


class _ModelSeries:
    """One model's children of the labelled histograms and counters, fed by its engine's step listener."""

    def __init__(self, metrics: "Metrics", async_engine: AsyncEngine, model_name: str):
        self.model_name = model_name
        self.ttft, self.itl, self.tpot, self.e2e, self.batch = (
            metrics.ttft.labels(model_name), metrics.itl.labels(model_name), metrics.tpot.labels(model_name),
            metrics.e2e.labels(model_name), metrics.batch.labels(model_name))
        self.success = metrics.success
        metrics.healthy.labels(model_name).set_function(lambda: float(async_engine.healthy))
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
            reasons = [c.finish_reason for c in out.outputs] if isinstance(out, RequestOutput) else ["stop"]
            for reason in reasons:  # a pooling request (an embedding) ends as "stop"
                self.success.labels(self.model_name, reason or "unknown").inc()
        if record.num_aborted:
            self.success.labels(self.model_name, "abort").inc(record.num_aborted)


class Metrics:
    """All ``pagedllm:*`` metrics of one server, every served model under its ``model_name`` label;
    ``render()`` is the ``/metrics`` body."""

    def __init__(self, async_engine: AsyncEngine, model_name: str):
        self.registry = CollectorRegistry()
        self._collector = _EngineCollector()
        self.registry.register(self._collector)
        labels = ["model_name"]

        def hist(name, doc, buckets=_LATENCY_BUCKETS):
            return Histogram(PREFIX + name, doc, labels, buckets=buckets, registry=self.registry)

        self.ttft = hist("time_to_first_token_seconds", "Time from arrival to the first token.")
        self.itl = hist("inter_token_latency_seconds", "Time between two tokens of one request.")
        self.tpot = hist("time_per_output_token_seconds", "Mean time per output token after the first.")
        self.e2e = hist("e2e_request_latency_seconds", "Time from arrival to the last token.")
        self.batch = hist("batch_size", "Sequences that sampled a token in one step (continuous batching).",
                          _BATCH_BUCKETS)
        self.success = Counter(PREFIX + "request_success", "Finished requests by finish reason.",
                               labels + ["finished_reason"], registry=self.registry)
        self.healthy = Gauge(PREFIX + "engine_healthy", "1 while the engine loop is alive.", labels,
                             registry=self.registry)
        self.series: list[_ModelSeries] = []
        self.add_model(async_engine, model_name)

    def add_model(self, async_engine: AsyncEngine, model_name: str) -> None:
        """Another served model (``serve --also``): its own samples in every family."""
        self._collector.engines.append((async_engine, model_name))
        self.series.append(_ModelSeries(self, async_engine, model_name))

    def render(self) -> bytes:
        return generate_latest(self.registry)
