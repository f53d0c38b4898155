"""Where a validator tells the world what it did: a JSONL challenge log, optional W&B, Prometheus /metrics.

None of these may stop a validator: a failing W&B turns itself off with one warning, a full disk loses log lines
(with a warning), and /metrics is served from the validator's own event loop (prometheus_client's aiohttp handler).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from loguru import logger

from bitmind_lite.metrics import NodeMetrics


class ChallengeLog:
    """One JSON object per challenge, appended and flushed (a crash loses at most the line being written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self._warned = False

    def append(self, record: dict) -> None:
        try:
            self._file.write(json.dumps(record, separators=(",", ":"), default=str) + "\n")
            self._file.flush()
        except OSError as e:
            if not self._warned:
                logger.warning(f"cannot write the challenge log {self.path}: {e}")
                self._warned = True

    def close(self) -> None:
        self._file.close()


class WandbRun:
    """Weights & Biases, only when asked for (--wandb.off false) and importable; any failure disables it."""

    def __init__(self, enabled: bool, project: str, entity: Optional[str], name: str, config: dict):
        self.run = None
        if not enabled:
            return
        try:
            import wandb

            self.run = wandb.init(project=project, entity=entity, name=name, config=config, reinit=True)
        except Exception as e:  # noqa: BLE001 - not installed, not logged in, offline: never fatal
            logger.warning(f"W&B disabled: {type(e).__name__}: {e}")

    def log(self, data: dict, step: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log(data, step=step)
        except Exception as e:  # noqa: BLE001
            logger.warning(f"W&B disabled after a failed log call: {type(e).__name__}: {e}")
            self.run = None

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:  # noqa: BLE001
                pass


ROUND_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0)  # seconds; timeout 9 s


class ValidatorMetrics(NodeMetrics):
    """The validator's Prometheus metrics, on its own registry (bitmind_lite/metrics.py owns the exposition)."""

    def __init__(self):
        super().__init__()
        self.challenges = self.counter("bitmind_validator_challenges_total", "challenges completed")
        self.answers = self.counter("bitmind_validator_answers_total", "miner answers by result (valid/invalid)",
                                    ("result",))
        self.round_seconds = self.histogram("bitmind_validator_round_seconds", "wall time of a challenge round",
                                            ROUND_BUCKETS)
        self.miners_queried = self.gauge("bitmind_validator_miners_queried", "miners queried in the last challenge")
        self.chain_up = self.gauge("bitmind_validator_chain_up", "1 when the last chain call succeeded")
        self.last_weights_block = self.gauge("bitmind_validator_last_weights_block",
                                             "block of the last successful set_weights")
        self.miner_score = self.gauge("bitmind_validator_miner_score", "EMA score per miner", ("uid", "hotkey"))
        self.cache_rounds = self.counter("bitmind_validator_cache_rounds_total", "challenges by where they came "
                                         "from: the pool (hit) or sampled in the round because it was empty (miss)",
                                         ("result",))
        self.cache_items = self.gauge("bitmind_validator_cache_items", "challenges ready in the pool after the last "
                                      "round")
        self.cache_bytes = self.gauge("bitmind_validator_cache_bytes", "bytes of those challenges")
        self.cache_take_p95 = self.gauge("bitmind_validator_cache_take_p95_seconds",
                                         "95th percentile of the recent pool takes (lock, manifest read, file read)")

    def observe_scores(self, miners: dict[int, tuple[str, float]]) -> None:
        """{uid: (hotkey, score)} replaces every score series, so a uid taken over by a new hotkey does not keep
        the old hotkey's series."""
        self.miner_score.clear()
        for uid, (hotkey, score) in miners.items():
            self.miner_score.set(score, str(uid), hotkey)

    def observe_cache(self, hit: bool, pool: dict) -> None:
        """One round served by a CachedSampler; `pool` is its pool_stats()."""
        self.cache_rounds.inc("hit" if hit else "miss")
        self.cache_items.set(pool["items"])
        self.cache_bytes.set(pool["bytes"])
        if pool["take_ms"]["p95"] is not None:
            self.cache_take_p95.set(pool["take_ms"]["p95"] / 1e3)

    async def serve(self, host: str, port: int):
        """GET /metrics on host:port from the validator's event loop; returns the runner (`await runner.cleanup()`)."""
        runner = await super().serve(host, port)
        logger.info(f"Prometheus metrics on http://{host}:{port}/metrics")
        return runner
