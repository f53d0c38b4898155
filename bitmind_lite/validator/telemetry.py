"""Where a validator tells the world what it did: a JSONL challenge log, optional W&B, Prometheus /metrics.

None of these may stop a validator: a failing W&B turns itself off with one warning, a full disk loses log lines
(with a warning), and /metrics is served from the validator's own event loop with aiohttp.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

from loguru import logger


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


def _fmt(v: float) -> str:
    return repr(float(v)) if math.isfinite(v) else ("NaN" if math.isnan(v) else ("+Inf" if v > 0 else "-Inf"))


class ValidatorMetrics:
    """A handful of gauges and counters in the Prometheus text format (no client library needed for this few)."""

    HELP = {
        "bitmind_validator_challenges_total": ("counter", "challenges completed"),
        "bitmind_validator_answers_total": ("counter", "miner answers by result (valid/invalid)"),
        "bitmind_validator_round_seconds": ("gauge", "wall time of the last challenge round"),
        "bitmind_validator_miners_queried": ("gauge", "miners queried in the last challenge"),
        "bitmind_validator_chain_up": ("gauge", "1 when the last chain call succeeded"),
        "bitmind_validator_last_weights_block": ("gauge", "block of the last successful set_weights"),
        "bitmind_validator_miner_score": ("gauge", "EMA score per miner uid"),
    }

    def __init__(self):
        self.values: dict[tuple[str, tuple], float] = {}
        self.started = time.time()

    def set(self, name: str, value: float, **labels) -> None:
        self.values[(name, tuple(sorted(labels.items())))] = float(value)

    def inc(self, name: str, amount: float = 1.0, **labels) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> str:
        lines = []
        for name, (kind, help_) in self.HELP.items():
            samples = sorted((labels, v) for (n, labels), v in self.values.items() if n == name)
            if not samples:
                continue
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
            for labels, v in samples:
                label_text = "{" + ",".join(f'{k}="{val}"' for k, val in labels) + "}" if labels else ""
                lines.append(f"{name}{label_text} {_fmt(v)}")
        return "\n".join(lines) + "\n"

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
