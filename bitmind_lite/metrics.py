"""Prometheus text exposition without a dependency: counters, gauges and histograms, rendered on demand.

Shared by the miner and the validator. Updates are expected on one thread (each node records from its event loop),
so no locks are needed.
"""
from __future__ import annotations

import bisect
import math
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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


def render_metrics(metrics) -> str:
    """The text exposition format for a list of Counter/Gauge/Histogram."""
    lines = []
    for m in metrics:
        lines += [f"# HELP {m.name} {m.help}", f"# TYPE {m.name} {m.kind}", *m.samples()]
    return "\n".join(lines) + "\n"
