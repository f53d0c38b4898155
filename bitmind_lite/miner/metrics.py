"""Prometheus text exposition without a dependency: counters, gauges and histograms, rendered on demand.

Every update happens on the event loop thread (the batcher hands results back to the loop before recording),
so no locks are needed.
"""
from __future__ import annotations

import bisect
import math
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _labels(names: tuple[str, ...], values: tuple) -> str:
    if not names:
        return ""
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in values)
    return "{" + ",".join(f'{n}="{v}"' for n, v in zip(names, escaped)) + "}"


def _number(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()):
        self.name, self.help, self.label_names = name, help, labels
        self.values: dict[tuple, float] = defaultdict(float)

    def inc(self, *labels, amount: float = 1.0) -> None:
        self.values[labels] += amount

    def samples(self):
        for labels, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.label_names, labels)} {_number(v)}"


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, *labels) -> None:
        self.values[labels] = float(value)

    def clear(self) -> None:
        self.values.clear()


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # last slot: above every bucket (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def samples(self):
        running = 0
        for bound, n in zip(self.buckets + (math.inf,), self.counts):
            running += n
            yield f'{self.name}_bucket{{le="{_number(bound)}"}} {running}'
        yield f"{self.name}_sum {_number(self.sum)}"
        yield f"{self.name}_count {running}"


class MinerMetrics:
    """The miner's metrics. Names follow Prometheus conventions (base units, `_total` for counters)."""

    def __init__(self):
        self.requests = Counter("miner_requests_total", "detect requests by HTTP status", ("status",))
        self.latency = Histogram("miner_request_seconds", "detect request latency (server side)", LATENCY_BUCKETS)
        self.model_seconds = Histogram("miner_batch_seconds", "decode + preprocess + predict time per batch",
                                       LATENCY_BUCKETS)
        self.batch_size = Histogram("miner_batch_size", "images per model batch", BATCH_BUCKETS)
        self.queue_depth = Gauge("miner_queue_depth", "requests waiting for the model")
        self.model_load = Gauge("miner_model_load_seconds", "seconds it took to load the detector at start")
        self.reloads = Counter("miner_weight_reloads_total", "weights hot-swaps by result", ("result",))
        self.info = Gauge("miner_detector_info", "the detector being served", ("detector", "version"))
        self.metagraph_block = Gauge("miner_metagraph_block", "block of the last metagraph snapshot")
        self.metagraph_syncs = Counter("miner_metagraph_syncs_total", "metagraph refreshes by result", ("result",))
        self.registered = Gauge("miner_registered", "1 when this miner's hotkey is in the metagraph")

    def all(self):
        return [v for v in vars(self).values() if hasattr(v, "samples")]

    def set_detector(self, name: str, version: str) -> None:
        self.info.clear()
        self.info.set(1, name, version)

    def observe_request(self, status: int, seconds: float) -> None:
        self.requests.inc(str(status))
        self.latency.observe(seconds)

    def render(self) -> str:
        lines = []
        for m in self.all():
            lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}", *m.samples()]
        return "\n".join(lines) + "\n"
