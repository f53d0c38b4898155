"""The miner's moving parts and background work: metagraph refresh, registration check, endpoint publishing,
weights hot-swap, and the operator address (--neuron.metrics_address): /metrics and /stats, off the public port.
The HTTP layer (app.py) only reads from a `MinerService`; `run.py` builds one and serves it.

Chain calls block, so they run in a worker thread and a request never waits for them; a failed refresh keeps the
last snapshot and is retried.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Optional

from bittensor.http_auth import InMemoryNonceStore
from loguru import logger

from bitmind_lite.chain import ChainUnavailable
from bitmind_lite.config import MinerConfig
from bitmind_lite.metrics import CONTENT_TYPE, serve_app
from bitmind_lite.miner.batcher import Batcher
from bitmind_lite.miner.gate import Gate
from bitmind_lite.miner.metrics import MinerMetrics
from bitmind_lite.miner.stats import StandingCache, report

REPUBLISH_EVERY = 600.0  # seconds between endpoint publish attempts (ServeAxon is rate-limited by the chain)


def _file_signature(path: Path) -> Optional[tuple]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class MinerService:
    """Detector + gate + batcher + chain, and the background tasks that keep them current."""

    def __init__(self, cfg: MinerConfig, hotkey_ss58: str, detector, chain, metrics: Optional[MinerMetrics] = None):
        self.cfg = cfg
        self.hotkey_ss58 = hotkey_ss58
        self.detector = detector
        self.chain = chain
        self.metrics = metrics or MinerMetrics()
        self.gate = Gate(cfg.blacklist)
        self.batcher = Batcher(detector, cfg.neuron.max_batch_size, cfg.neuron.max_wait_ms, cfg.neuron.queue_size,
                               self.metrics)
        self.nonces = InMemoryNonceStore()  # one per process: a replay is caught whichever connection it uses
        self.uid: Optional[int] = None
        self._registered: Optional[bool] = None  # None until the first snapshot
        self._last_publish = -float("inf")
        self._tasks: list[asyncio.Task] = []
        self._metrics_server = None  # the aiohttp runner behind --neuron.metrics_address
        self.started = time.monotonic()
        self.standing = StandingCache(ttl=cfg.neuron.sync_interval)  # /stats reads the chain at most this often
        self.metrics.set_detector(detector.name, detector.version)
        self.metrics.queue_depth.set_function(self.batcher.queued)  # exact at every scrape, on either address

    @property
    def endpoint(self) -> Optional[tuple[str, int]]:
        """(ip, port) to publish on chain, or None when --axon.external_ip is not set."""
        axon = self.cfg.axon
        return (axon.external_ip, axon.external_port or axon.port) if axon.external_ip else None

    # ---- lifecycle: the app's lifespan calls these on the serving loop ----
    async def start(self) -> None:
        address = self.cfg.neuron.metrics_address
        if address:  # first: an address in use fails the start before the model is warmed up
            host, _, port = address.rpartition(":")
            host = host.strip("[]")  # [::1]:9100
            try:
                self._metrics_server = await self._serve_operator(host, int(port))
            except OSError as e:
                raise RuntimeError(f"cannot serve /metrics on {address} (--neuron.metrics_address / "
                                   f"NEURON_METRICS_ADDRESS): {e.strerror or e}") from None
            logger.info(f"Prometheus metrics on http://{address}/metrics and this miner's stats on "
                        f"http://{address}/stats (not on the public port)")
        self.batcher.start()
        await self.batcher.calibrate()  # before the first request: batch sizes need the model's speed
        self._tasks = [asyncio.create_task(self._sync_forever(), name="metagraph-sync"),
                       asyncio.create_task(self._watch_weights(), name="weights-watch")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.batcher.stop()
        if self._metrics_server is not None:
            await self._metrics_server.cleanup()
        try:
            await asyncio.to_thread(self.chain.close)
        except Exception as e:  # closing a dead connection must not hide a clean shutdown
            logger.debug(f"closing the chain connection: {e}")
        logger.info("miner stopped")

    # ---- metagraph ----
    def sync(self, strict: bool = False) -> bool:
        """Blocking refresh, for start-up before the server runs. False when the chain is unreachable; with
        `strict`, any other error (a wrong netuid, say) is raised instead of retried."""
        ok, publish = self._apply(self._fetch(strict))
        if publish:
            self.publish_endpoint()
        return ok

    async def refresh(self) -> bool:
        """The same from the serving loop: chain calls in a thread, state changes on the loop."""
        ok, publish = self._apply(await asyncio.to_thread(self._fetch))
        if publish:
            await asyncio.to_thread(self.publish_endpoint)
        return ok

    def _fetch(self, strict: bool = False):
        try:
            return self.chain.metagraph()
        except Exception as e:  # keep the last snapshot and try again later: a request never waits for the chain
            if strict and not isinstance(e, ChainUnavailable):
                raise
            age = "no snapshot yet" if self.gate.snapshot is None else f"keeping block {self.gate.snapshot.block}"
            log = logger.warning if isinstance(e, ChainUnavailable) else logger.error
            log(f"metagraph refresh failed ({age}): {type(e).__name__}: {e}")
            return None

    def _apply(self, snapshot) -> tuple[bool, bool]:
        """Install a snapshot; returns (synced, endpoint needs publishing)."""
        if snapshot is None:
            self.metrics.metagraph_syncs.inc("error")
            return False, False
        self.gate.update(snapshot)
        self.metrics.metagraph_syncs.inc("ok")
        self.metrics.metagraph_block.set(snapshot.block)
        me = self._check_registration(snapshot)
        stale = me is not None and self.endpoint is not None and me.endpoint != self.endpoint
        return True, stale and time.monotonic() - self._last_publish >= REPUBLISH_EVERY

    def _check_registration(self, snapshot):
        me = self.gate.neuron(self.hotkey_ss58)
        registered = me is not None
        self.uid = me.uid if me else None
        self.metrics.registered.set(int(registered))
        if registered != self._registered:
            if registered:
                logger.success(f"hotkey {self.hotkey_ss58} is registered as uid {me.uid} on subnet {snapshot.netuid}")
            elif self._registered is None:
                logger.error(f"hotkey {self.hotkey_ss58} is NOT registered on subnet {snapshot.netuid}: validators "
                             f"will not query this miner. Register it; the miner notices within "
                             f"{self.cfg.neuron.sync_interval:g}s and keeps serving meanwhile.")
            else:
                logger.error(f"hotkey {self.hotkey_ss58} was DEREGISTERED from subnet {snapshot.netuid} at block "
                             f"{snapshot.block}: validators will stop querying this miner. Register again.")
        self._registered = registered
        return me

    def publish_endpoint(self) -> None:
        """ServeAxon our (ip, port); the chain layer skips it when that is already published."""
        self._last_publish = time.monotonic()
        ip, port = self.endpoint
        try:
            result = self.chain.serve_axon(ip, port)
        except Exception as e:
            logger.warning(f"could not publish endpoint {ip}:{port}: {type(e).__name__}: {e}")
            return
        if result.ok:
            logger.info(f"endpoint {ip}:{port} on chain: {result.message}")
        else:
            logger.warning(f"publishing endpoint {ip}:{port} failed: {result.code} {result.message}")

    async def _sync_forever(self) -> None:
        interval = self.cfg.neuron.sync_interval
        while True:
            # Without any snapshot every request is refused, so retry sooner until the first one arrives.
            await asyncio.sleep(interval if self.gate.snapshot is not None else min(5.0, interval))
            await self.refresh()

    # ---- weights hot-swap ----
    async def reload_weights(self, path) -> bool:
        """Load `path` on the model thread between batches; a bad file is rejected and the old model keeps serving."""
        old = self.detector.version
        start = time.perf_counter()
        try:
            await self.batcher.run_in_model_thread(self.detector.reload, path)
        except Exception as e:
            self.metrics.reloads.inc("rejected")
            logger.error(f"weights file {path} rejected, still serving {self.detector.name}/{old}: "
                         f"{type(e).__name__}: {e}")
            return False
        self.metrics.reloads.inc("ok")
        self.metrics.set_detector(self.detector.name, self.detector.version)
        logger.success(f"hot-swapped {self.detector.name} weights {old} -> {self.detector.version} from {path} "
                       f"in {time.perf_counter() - start:.2f}s")
        return True

    async def _watch_weights(self) -> None:
        path = getattr(self.detector, "weights_path", None)
        if not self.cfg.neuron.watch_weights or path is None or not hasattr(self.detector, "reload"):
            logger.info("not watching a weights file (disabled, or the detector has no weights file)")
            return
        path = Path(path)
        logger.info(f"watching {path} for new weights every {self.cfg.neuron.watch_interval:g}s")
        seen, pending = _file_signature(path), None
        while True:
            await asyncio.sleep(self.cfg.neuron.watch_interval)
            current = _file_signature(path)
            if current is None or current == seen:
                pending = None
                continue
            if current != pending:  # changed since the last look: wait one more interval so a copy can finish
                pending = current
                continue
            seen, pending = current, None
            await self.reload_weights(os.fspath(path))

    async def _serve_operator(self, host: str, port: int):
        """GET /metrics and GET /stats on host:port (aiohttp, on the serving loop); returns the runner."""
        from aiohttp import web

        async def metrics(request):
            return web.Response(body=self.metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

        async def stats(request):
            return web.json_response(await self.stats())

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/stats", stats)
        return await serve_app(app, host, port)

    # ---- read by /stats ----
    async def stats(self) -> dict:
        return report(self, await self.standing.get(self.chain, self.hotkey_ss58, self.cfg.subtensor.network))

    # ---- read by /health ----
    def health(self) -> dict:
        snapshot = self.gate.snapshot
        return {"status": "ok", "hotkey": self.hotkey_ss58, "detector": self.detector.name,
                "version": self.detector.version, "uid": self.uid,
                "block": snapshot.block if snapshot is not None else None}
