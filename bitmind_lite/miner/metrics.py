"""The miner's Prometheus metrics (the exposition format lives in bitmind_lite/metrics.py).

Every update happens on the event loop thread (the batcher hands results back to the loop before recording),
so no locks are needed.
"""
from __future__ import annotations

from bitmind_lite.metrics import LATENCY_BUCKETS, Counter, Gauge, Histogram, render_metrics

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        return render_metrics(self.all())
