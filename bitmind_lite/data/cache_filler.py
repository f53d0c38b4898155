"""The process that keeps a ChallengeCache full, and the validator-side supervisor that runs it.

    filler = CacheFiller(dir, spec, max_items, max_bytes, max_uses)   # CachedSampler does this for you
    filler.start()      # spawns `fill`, waits until it has built its sampler (a bad spec raises SourceError here)
    filler.stop()       # SIGTERM: the pool survives a kill at any point (see cache.py)

The filler runs in a spawned process, not a thread: the generator networks hold the GIL and the CPU, and a
validator round must never wait for them. It watches its parent and exits when the parent is gone, even after a
kill -9 of the parent; a filler that dies is restarted with backoff.
"""
from __future__ import annotations

import atexit
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import secrets
import signal
import threading
import time
from contextlib import suppress
from pathlib import Path

from loguru import logger

from bitmind_lite.data.cache import ChallengeCache, SamplerSpec, encode_png


# ---- the filler process ----
def _parent_alive(parent_pid: int) -> bool:
    parent = mp.parent_process()  # its sentinel is a pipe that closes when the parent dies, even by kill -9
    return os.getppid() == parent_pid and (parent is None or parent.is_alive())


def fill(root: str, spec: SamplerSpec, max_items: int, max_bytes: int, max_uses: int, parent_pid: int,
         ready=None, log_level: str = "INFO", logging_dir: str | None = None, poll_s: float = 0.1,
         max_failures: int = 10) -> None:
    """The filler process: build a sampler, then keep the cache full until the parent is gone. A failed
    challenge is logged and retried with backoff; `max_failures` in a row exit(1) so the supervisor restarts us."""
    from bitmind_lite.log import setup_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent stops us
    setup_logging(log_level, logging_dir, name="validator-cache-filler")
    with suppress(OSError):
        os.nice(10)  # background work: the validator's own rounds and HTTP come first

    def report(status: str, detail: str = "") -> None:
        with suppress(OSError, AttributeError):  # nobody listening any more (restart, or the parent gave up)
            ready.send((status, detail))
            ready.close()

    try:
        cache = ChallengeCache(root, max_items, max_bytes, max_uses, tag=spec.tag())
        sampler = spec.build(seed=secrets.randbits(63))  # fresh entropy, see SamplerSpec
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides whether it is fatal
        report("error", f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None
    report("ready")
    failures = 0
    try:
        while _parent_alive(parent_pid):
            if not cache.has_room():
                time.sleep(poll_s)
                continue
            try:
                image, label, meta = sampler.sample()
                cache.add(encode_png(image), label, meta)
                failures = 0
            except Exception as e:  # noqa: BLE001 - one bad challenge must not stop the pool
                failures += 1
                logger.opt(exception=True).warning(f"cache filler: {failures} failed challenge(s) in a row: {e}")
                if failures >= max_failures:
                    raise SystemExit(1) from None
                time.sleep(min(30.0, 0.1 * 2 ** failures))
    finally:
        sampler.close()
        cache.close()


class CacheFiller:
    """Runs `fill` in a spawned process (the generator networks hold the GIL and the CPU), restarts it with
    exponential backoff (1 s doubling to 60 s, reset after a minute of running) when it dies; stop() ends it."""

    def __init__(self, root: str | Path, spec: SamplerSpec, max_items: int, max_bytes: int, max_uses: int,
                 log_level: str = "INFO", logging_dir: str | None = None):
        self.spec = spec
        self.args = (str(root), spec, max_items, max_bytes, max_uses, os.getpid())
        self.log_options = {"log_level": log_level, "logging_dir": logging_dir}
        self.proc: mp.process.BaseProcess | None = None
        self.restarts = 0
        self._started = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one thread at a time spawns, reaps or terminates the process
        self._watcher: threading.Thread | None = None

    def _spawn(self, ready=None) -> None:
        ctx = mp.get_context("spawn")
        self.proc = ctx.Process(target=fill, args=self.args, kwargs={"ready": ready, **self.log_options},
                                name="challenge-cache-filler", daemon=True)
        self.proc.start()
        self._started = time.monotonic()

    def start(self, timeout: float = 60.0) -> None:
        """Spawn the filler and wait up to `timeout` s for it to build its sampler. A spec it cannot build raises
        SourceError (a configuration problem); a slow start only logs: the fallback serves meanwhile."""
        from bitmind_lite.data.photo import SourceError

        recv, send = mp.get_context("spawn").Pipe(duplex=False)
        with self._lock:
            self._spawn(send)
        send.close()
        status, detail = "timeout", ""
        if recv.poll(timeout):
            try:
                status, detail = recv.recv()
            except EOFError:
                self.proc.join(5)
                status, detail = "error", f"it exited with status {self.proc.exitcode} before building its sampler"
        recv.close()
        if status == "error":
            self.stop()
            raise SourceError(f"challenge cache filler for real={self.spec.real!r} fake={self.spec.fake!r}: {detail}")
        if status == "timeout":
            logger.warning(f"challenge cache filler not ready after {timeout:g} s; rounds sample synchronously "
                           "until it delivers")
        self._watcher = threading.Thread(target=self._watch, name="cache-filler-watch", daemon=True)
        self._watcher.start()
        atexit.register(self.stop)  # before multiprocessing's own exit hook kills it, which would read as a crash

    def _watch(self) -> None:
        delay = 0.5
        while True:
            mp_connection.wait([self.proc.sentinel])
            with self._lock:
                if self._stop.is_set():
                    return
                self.proc.join()
                ran = time.monotonic() - self._started
                code = self.proc.exitcode
            delay = 1.0 if ran > 60 else min(60.0, delay * 2)
            logger.warning(f"challenge cache filler exited with status {code} after {ran:.1f} s; "
                           f"restarting it in {delay:g} s")
            if self._stop.wait(delay):
                return
            with self._lock:
                if self._stop.is_set():
                    return
                self._spawn()
                self.restarts += 1

    def alive(self) -> bool:
        with self._lock:
            return self.proc is not None and self.proc.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        atexit.unregister(self.stop)
        with self._lock:
            p = self.proc
            if p is not None and p.is_alive():
                p.terminate()  # SIGTERM: the cache survives a kill at any point, no need to be gentle
                p.join(timeout)
                if p.is_alive():
                    p.kill()
                    p.join(timeout)
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout)
