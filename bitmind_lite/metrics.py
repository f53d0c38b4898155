"""Prometheus metrics for both nodes, exposed by `prometheus_client`; this module is the one place that knows it.

Each node (`MinerMetrics`, `ValidatorMetrics`) subclasses `NodeMetrics`: its own `CollectorRegistry` (two nodes in
one process, as in the tests, never share a series), the process's CPU, memory and file descriptors
(`bitmind_process_*`) and the Python version (`bitmind_python_info`). Every metric name starts with `bitmind_`, so
a dashboard finds all of this subnet's series with one prefix; a name without it is refused when it is declared.

Counter, Gauge and Histogram take label values positionally (`requests.inc("200")`, `info.set(1, "npr", "v1")`),
the call style every node uses, and hide prometheus_client's `.labels(...)` step.
"""
from __future__ import annotations

from typing import Callable, Iterable

import prometheus_client as prom
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

PREFIX = "bitmind_"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what a /metrics answer is sent as (the text format Prometheus scrapes)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# `_created` series (one timestamp per counter/histogram series) double the output for nothing a dashboard reads.
prom.disable_created_metrics()


def _checked(name: str) -> str:
    if not name.startswith(PREFIX):
        raise ValueError(f"metric {name!r} must start with {PREFIX!r}")
    return name


class _Labelled:
    def __init__(self, metric):
        self.metric = metric

    def _series(self, labels: tuple):
        return self.metric.labels(*labels) if labels else self.metric


class Counter(_Labelled):
    def __init__(self, registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...] = ()):
        super().__init__(prom.Counter(_checked(name), help, labels, registry=registry))

    def inc(self, *labels, amount: float = 1.0) -> None:
        self._series(labels).inc(amount)


class Gauge(_Labelled):
    def __init__(self, registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...] = ()):
        super().__init__(prom.Gauge(_checked(name), help, labels, registry=registry))

    def set(self, value: float, *labels) -> None:
        self._series(labels).set(value)

    def set_function(self, read: Callable[[], float]) -> None:
        """Read the value at scrape time (an unlabelled gauge only); later `set` calls are then ignored."""
        self.metric.set_function(read)

    def clear(self) -> None:
        """Drop every labelled series (e.g. the old detector version after a reload)."""
        self.metric.clear()


class Histogram(_Labelled):
    def __init__(self, registry: CollectorRegistry, name: str, help: str, buckets: tuple[float, ...]):
        self.buckets = tuple(buckets)  # upper bounds; prometheus_client adds +Inf
        super().__init__(prom.Histogram(_checked(name), help, buckets=self.buckets, registry=registry))

    def observe(self, value: float) -> None:
        self.metric.observe(value)

    @property
    def counts(self) -> list[int]:
        """Observations per bucket, not cumulative; the last slot counts those above every bound."""
        (family,) = self.metric.collect()
        cumulative = [s.value for s in family.samples if s.name.endswith("_bucket")]
        return [int(b - a) for a, b in zip([0.0] + cumulative, cumulative)]


class _Prefixed(Collector):
    """A collector's families under PREFIX (PlatformCollector has no namespace argument)."""

    def __init__(self, collector: Collector):
        self.collector = collector

    def collect(self) -> Iterable[Metric]:
        for family in self.collector.collect():
            renamed = Metric(PREFIX + family.name, family.documentation, family.type, family.unit)
            renamed.samples = [s._replace(name=PREFIX + s.name) for s in family.samples]
            yield renamed


class NodeMetrics:
    """A node's registry with process metrics; subclasses declare their metrics with counter/gauge/histogram."""

    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(namespace=PREFIX.rstrip("_"), registry=self.registry)
        self.registry.register(_Prefixed(PlatformCollector(registry=None)))

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(self.registry, name, help, labels)

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(self.registry, name, help, labels)

    def histogram(self, name: str, help: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(self.registry, name, help, buckets)

    def render(self) -> str:
        """The text exposition of every metric in this node's registry."""
        return generate_latest(self.registry).decode()

    async def serve(self, host: str, port: int):
        """GET /metrics on host:port from the running event loop (aiohttp); returns the runner: `await
        runner.cleanup()` stops it. Raises OSError when the address cannot be bound."""
        from aiohttp import web
        from prometheus_client.aiohttp import make_aiohttp_handler

        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        return await serve_app(app, host, port)


async def serve_app(app, host: str, port: int):
    """Serve an aiohttp `app` on host:port from the running event loop (the nodes' side ports: /metrics, the miner's
    operator address, the validator dashboard); returns the runner: `await runner.cleanup()` stops it. OSError
    when the address cannot be bound, with nothing left running."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    return runner
