"""What this process measures for `/metrics` (bot/http/metrics.py), in a registry of its
own so that every Services instance (the tests make many) counts only its own work.

Figures the ledger already holds (tokens charged, holds pending, webhook events) are read
from the database at each scrape instead (bot/http/metrics.py): they are then the same
in every process, the standalone sidecar included, and equal the ledger's by
construction. Here are only what no table records: paid calls by outcome, the AI call's
latency by operation, the sizes of the ledger's write batches, and the retrieval cache
(hits, loads, hit rate, agents and bytes held) with the reads that waited for a reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# From a cached embedding to a slow image generation.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


if TYPE_CHECKING:  # the retriever imports nothing of this module; only its figures
    from bot.core.documents.retrieval import CacheStats


class _Retrieval(Collector):
    """The retrieval cache's figures, read from it at each scrape."""

    def __init__(self, stats: Callable[[], CacheStats], reader: Any) -> None:
        self.stats, self.reader = stats, reader

    def collect(self) -> Iterator[Any]:
        figures = self.stats()
        yield CounterMetricFamily(
            "bot_retrieval_cache_hits", "Retrievals served from the cache", figures.hits
        )
        yield CounterMetricFamily(
            "bot_retrieval_cache_loads",
            "Retrievals that loaded the agent's chunk matrix (not cached, or changed)",
            figures.misses,
        )
        yield CounterMetricFamily(
            "bot_retrieval_load_seconds", "Time spent loading chunk matrices", figures.load_seconds
        )
        yield GaugeMetricFamily(
            "bot_retrieval_cache_hit_ratio", "Hits / (hits + loads) so far", figures.hit_rate
        )
        yield GaugeMetricFamily(
            "bot_retrieval_cache_agents", "Agents whose matrix is cached", figures.agents
        )
        yield GaugeMetricFamily(
            "bot_retrieval_cache_bytes", "Bytes of the cached matrices", figures.bytes
        )
        waits = getattr(self.reader, "waits", None)
        if waits is not None:  # SQLite's reader pool
            yield CounterMetricFamily(
                "bot_ledger_reader_waits", "Reads that found every reader connection busy", waits
            )


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.paid_calls = Counter(
            "bot_paid_calls",
            "Metered calls by operation and outcome (ok, partial, failed, refused)",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.ai_latency = Histogram(
            "bot_ai_call_seconds",
            "Wall-clock time of the AI call of a metered operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.write_batches = Histogram(
            "bot_ledger_write_batch_size",
            "Operations committed together in one ledger transaction",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def paid_call(self, operation: str, outcome: str, seconds: float | None) -> None:
        self.paid_calls.labels(operation, outcome).inc()
        if seconds is not None:
            self.ai_latency.labels(operation).observe(seconds)

    def write_batch(self, size: int) -> None:
        self.write_batches.observe(size)

    def watch_retrieval(self, stats: Callable[[], CacheStats], reader: Any = None) -> None:
        """Report the retrieval cache (`Retriever.stats`) and the readers' waits."""
        self.registry.register(_Retrieval(stats, reader))
