"""The miner's Prometheus metrics, on the miner's own registry (bitmind_lite/metrics.py owns the exposition).

Every update happens on the event loop thread (the batcher hands results back to the loop before recording).
"""
from __future__ import annotations

from typing import Optional

from bitmind_lite.metrics import LATENCY_BUCKETS, NodeMetrics
from bitmind_lite.miner.stats import CallerWindow

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class MinerMetrics(NodeMetrics):
    """The miner's metrics. Names follow Prometheus conventions (base units, `_total` for counters)."""

    def __init__(self):
        super().__init__()
        self.requests = self.counter("bitmind_miner_requests_total", "detect requests by HTTP status", ("status",))
        self.latency = self.histogram("bitmind_miner_request_seconds", "detect request latency (server side)",
                                      LATENCY_BUCKETS)
        self.model_seconds = self.histogram("bitmind_miner_batch_seconds",
                                            "decode + preprocess + predict time per batch", LATENCY_BUCKETS)
        self.batch_size = self.histogram("bitmind_miner_batch_size", "images per model batch", BATCH_BUCKETS)
        self.queue_depth = self.gauge("bitmind_miner_queue_depth", "requests waiting for the model")
        self.seconds_per_image = self.gauge("bitmind_miner_seconds_per_image", "moving average of model seconds per "
                                            "image (sizes batches to deadlines)")
        self.dropped = self.counter("bitmind_miner_requests_dropped_total", "requests refused or dropped before "
                                    "compute: full queue, displaced, shed (no time behind the queue), expired "
                                    "(deadline)", ("reason",))
        self.model_load = self.gauge("bitmind_miner_model_load_seconds", "seconds it took to load the detector at "
                                     "start")
        self.reloads = self.counter("bitmind_miner_weight_reloads_total", "weights hot-swaps by result", ("result",))
        self.info = self.gauge("bitmind_miner_detector_info", "the detector being served", ("detector", "version"))
        self.metagraph_block = self.gauge("bitmind_miner_metagraph_block", "block of the last metagraph snapshot")
        self.metagraph_syncs = self.counter("bitmind_miner_metagraph_syncs_total", "metagraph refreshes by result",
                                            ("result",))
        self.registered = self.gauge("bitmind_miner_registered", "1 when this miner's hotkey is in the metagraph")
        # The last hour per caller hotkey, for /stats (stats.py): labels per hotkey would make unbounded series.
        self.by_caller = CallerWindow()

    def set_detector(self, name: str, version: str) -> None:
        self.info.clear()  # a reload replaces the series instead of adding one
        self.info.set(1, name, version)

    def observe_request(self, status: int, seconds: float, caller: Optional[str] = None) -> None:
        """One detect request; `caller` is its verified hotkey (None when the signature did not verify)."""
        self.requests.inc(str(status))
        self.latency.observe(seconds)
        self.by_caller.record(caller, status, seconds)
