"""Where a validator tells the world what it did: a JSONL challenge log, optional W&B, Prometheus /metrics.

None of these may stop a validator: a failing W&B turns itself off with one warning, a full disk loses log lines
(with a warning), and /metrics is served from the validator's own event loop with aiohttp.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from loguru import logger

from bitmind_lite.metrics import Counter, Gauge, render_metrics


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


class ValidatorMetrics:
    """The validator's Prometheus metrics (the exposition format lives in bitmind_lite/metrics.py)."""

    def __init__(self):
        self.challenges = Counter("bitmind_validator_challenges_total", "challenges completed")
        self.answers = Counter("bitmind_validator_answers_total", "miner answers by result (valid/invalid)",
                               ("result",))
        self.round_seconds = Gauge("bitmind_validator_round_seconds", "wall time of the last challenge round")
        self.miners_queried = Gauge("bitmind_validator_miners_queried", "miners queried in the last challenge")
        self.chain_up = Gauge("bitmind_validator_chain_up", "1 when the last chain call succeeded")
        self.last_weights_block = Gauge("bitmind_validator_last_weights_block", "block of the last successful set_weights")
        self.miner_score = Gauge("bitmind_validator_miner_score", "EMA score per miner uid", ("uid",))
        self.cache_rounds = Counter("bitmind_validator_cache_rounds_total", "challenges by where they came from: "
                                    "the pool (hit) or sampled in the round because it was empty (miss)", ("result",))
        self.cache_items = Gauge("bitmind_validator_cache_items", "challenges ready in the pool after the last round")
        self.cache_bytes = Gauge("bitmind_validator_cache_bytes", "bytes of those challenges")
        self.cache_take_p95 = Gauge("bitmind_validator_cache_take_p95_seconds",
                                    "95th percentile of the recent pool takes (lock, manifest read, file read)")

    def observe_cache(self, hit: bool, pool: dict) -> None:
        """One round served by a CachedSampler; `pool` is its pool_stats()."""
        self.cache_rounds.inc("hit" if hit else "miss")
        self.cache_items.set(pool["items"])
        self.cache_bytes.set(pool["bytes"])
        if pool["take_ms"]["p95"] is not None:
            self.cache_take_p95.set(pool["take_ms"]["p95"] / 1e3)

    def render(self) -> str:
        return render_metrics([v for v in vars(self).values() if hasattr(v, "samples")])

    async def serve(self, host: str, port: int):
        """Start GET /metrics on the running loop; returns the aiohttp runner (call `await runner.cleanup()`)."""
        from aiohttp import web

        async def metrics(_request):
            return web.Response(text=self.render(), content_type="text/plain", charset="utf-8")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        logger.info(f"Prometheus metrics on http://{host}:{port}/metrics")
        return runner
