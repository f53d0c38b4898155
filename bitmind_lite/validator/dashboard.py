"""The validator dashboard: one read-only web page over a validator's state folder (state.db + challenges.jsonl).

    bitmind-lite dashboard --dir STATE_DIR [--address 127.0.0.1:8092]   # a running, stopped or localnet validator
    python neurons/validator.py --neuron.dashboard_address 127.0.0.1:8092  # served by the validator itself

`GET /` is static/index.html; it polls the JSON endpoints (/api/leaderboard, history, families, latency,
challenges, chain), which answer from the files as they are at that moment, and draws its charts with the Chart.js
build vendored in static/ (nodes may be offline). Nothing here writes to the folder: SQLite is copied into memory
through a read-only connection (opened immutable when no validator holds the file, so no -wal/-shm appear) and the
log is only read, from where the last request stopped. The page shows challenge labels and images, which a miner
could learn from: bind it to 127.0.0.1 (the default) and reach it over an SSH tunnel (docs/dashboard.md).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
import signal
import sqlite3
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from aiohttp import web

from bitmind_lite.metrics import serve_app
from bitmind_lite.validator.dashboard_data import (
    DashboardError,
    chain,
    challenge_image,
    challenges,
    families,
    history,
    latency,
    leaderboard,
)
from bitmind_lite.validator.run import LOG_FILE, STATE_FILE
from bitmind_lite.validator.state import (
    SCHEMA_VERSION,
    ValidatorState,
    check_state_file,
    state_from_db,
)

DEFAULT_ADDRESS = "127.0.0.1:8092"
KEEP = 2000  # challenges the page looks back over; the log itself may hold months of them
STATIC = Path(__file__).with_name("static")
THUMB = 160  # pixels, the longer side of a challenge thumbnail
ANSWER_KEYS = {"uid", "hotkey", "prediction", "latency", "score"}  # what every answer in a log record must have


def parse_address(text: str, setting: str) -> tuple[str, int]:
    """'HOST:PORT' (port 0: any free one; '[::1]:8092' for IPv6) -> (host, port); ValueError naming `setting`."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{setting} {text!r}: expected HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    return host.strip("[]"), int(port)


# ---- reading, never writing ----
def read_state(path: Path) -> tuple[ValidatorState, dict[str, str]]:
    """(state, meta table) of a state.db; DashboardError when it is missing or not a state the validator would load."""
    if not path.is_file():
        raise DashboardError(f"no validator state at {path} (a validator's --neuron.state_dir holds {STATE_FILE} and "
                             f"{LOG_FILE}; it appears when the validator first starts)")
    # A running (or killed) validator keeps its newest transactions in STATE-wal, which a read-only connection
    # reads; a stopped one has no -wal, and a plain read-only open would then create -wal and -shm: immutable does not.
    live = path.with_name(path.name + "-wal").exists()
    memory = sqlite3.connect(":memory:")
    try:
        source = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro{'' if live else '&immutable=1'}", uri=True)
        try:
            source.backup(memory)  # one consistent snapshot, however the validator writes meanwhile
        finally:
            source.close()
        check_state_file(memory)
        meta = dict(memory.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("schema") != str(SCHEMA_VERSION):
            raise ValueError(f"schema version {meta.get('schema')!r}, expected {SCHEMA_VERSION}")
    except (sqlite3.DatabaseError, ValueError) as e:
        memory.close()
        raise DashboardError(f"{path} is not a readable validator state file: {e}") from None
    try:  # the validator's own checks, without its backup copy: the folder stays exactly as the validator left it
        return state_from_db(memory), meta
    except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as e:
        raise DashboardError(f"{path} is corrupt ({e}); the validator refuses it too") from None
    finally:
        memory.close()


class ChallengeTail:
    """The last `keep` records of challenges.jsonl, read on from where the previous refresh stopped (the validator
    only appends). A line that does not parse (a kill -9 mid-write) is skipped and counted; a last line without its
    newline is still being written and waits for the next refresh."""

    def __init__(self, path: Path, keep: int = KEEP):
        self.path, self.keep = path, keep
        self.records: deque[dict] = deque(maxlen=keep)
        self.offset, self.skipped, self._inode = 0, 0, None

    def refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        if st is None or st.st_ino != self._inode or st.st_size < self.offset:  # gone, replaced or truncated
            self.records.clear()
            self.offset, self.skipped, self._inode = 0, 0, st and st.st_ino
        if st is None or st.st_size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            lines = deque(f, maxlen=self.keep + 1)  # a first read of a long log parses only its tail
            end = f.tell()
        if lines and not lines[-1].endswith(b"\n"):
            end -= len(lines.pop())
        self.offset = end
        for line in lines:
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("miners"), list) or not all(
                        isinstance(a, dict) and ANSWER_KEYS <= a.keys() for a in record["miners"]):
                    raise ValueError("not a challenge record")
            except ValueError:
                self.skipped += 1
                continue
            self.records.append(record)


def _signature(path: Path) -> Optional[tuple]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class StateView:
    """The folder's current contents for the HTTP handlers (thread-safe: handlers run in worker threads)."""

    def __init__(self, state_dir: str | Path, keep: int = KEEP):
        self.dir = Path(state_dir).expanduser()
        self.db = self.dir / STATE_FILE
        self.tail = ChallengeTail(self.dir / LOG_FILE, keep)
        self._lock = threading.Lock()
        self._memo: dict[tuple, dict | list] = {}  # answers for the files as they are now (polls repeat them)

    def check(self) -> None:
        if not self.dir.is_dir():
            raise DashboardError(f"{self.dir} is not a folder (pass a validator's --neuron.state_dir)")
        read_state(self.db)

    def api(self, name: str, limit: int = 50) -> dict | list:
        with self._lock:
            self.tail.refresh()
            files = tuple(_signature(p) for p in (self.db, self.db.with_name(self.db.name + "-wal"))) + (
                self.tail.offset, self.tail._inode)
            if (name, limit, files) not in self._memo:
                self._memo = {k: v for k, v in self._memo.items() if k[2] == files}
                self._memo[name, limit, files] = self._answer(name, limit)
            return self._memo[name, limit, files]

    def _answer(self, name: str, limit: int) -> dict | list:
        state, meta = read_state(self.db)
        records = list(self.tail.records)
        return {"leaderboard": lambda: leaderboard(state, records), "chain": lambda: chain(state, meta, self.tail),
                "challenges": lambda: challenges(records, limit), "history": lambda: history(records),
                "families": lambda: families(records), "latency": lambda: latency(records)}[name]()

    def png(self, step: int) -> bytes:
        with self._lock:
            self.tail.refresh()
            record = next((r for r in reversed(self.tail.records) if r.get("step") == step), None)
            if record is None:
                raise DashboardError(f"challenge {step} is not among the last {self.tail.keep}")
            image = challenge_image(record).copy()
        image.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()


API = ("leaderboard", "history", "families", "latency", "challenges", "chain")  # GET /api/<name>


def make_app(view: StateView) -> web.Application:
    async def api(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in API:
            raise web.HTTPNotFound(text=json.dumps({"detail": f"no endpoint /api/{name}; there are {', '.join(API)}"}),
                                   content_type="application/json")
        limit = request.query.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= KEEP:
            return web.json_response({"detail": f"limit must be an integer in [1, {KEEP}]"}, status=400)
        try:
            return web.json_response(await asyncio.to_thread(view.api, name, int(limit)))
        except DashboardError as e:
            return web.json_response({"detail": str(e)}, status=503)

    async def png(request: web.Request) -> web.Response:
        step = request.match_info["step"]
        try:
            return web.Response(body=await asyncio.to_thread(view.png, int(step)), content_type="image/png")
        except DashboardError as e:
            return web.json_response({"detail": str(e)}, status=404)

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get(r"/api/challenges/{step:\d+}.png", png)
    app.router.add_get("/api/{name}", api)
    app.router.add_static("/static/", STATIC)
    return app


async def serve(state_dir: str | Path, host: str, port: int, keep: int = KEEP) -> web.AppRunner:
    """The dashboard of `state_dir` on host:port (port 0: a free one; `url(runner)` says which)."""
    return await serve_app(make_app(StateView(state_dir, keep)), host, port)


def url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/"


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def warn_if_public(host: str) -> Optional[str]:
    """A warning when `host` is reachable from other machines (anything but a loopback address)."""
    if host == "localhost" or _is_loopback_ip(host):
        return None
    return (f"the dashboard listens on {host}, not only on this machine: it shows challenge labels and images, which "
            f"miners could learn from. Prefer 127.0.0.1 and an SSH tunnel (docs/dashboard.md)")


async def _serve_until_stopped(state_dir: Path, host: str, port: int, keep: int) -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    runner = await serve(state_dir, host, port, keep)
    print(f"dashboard of {state_dir} on {url(runner)} (read-only; Ctrl-C stops it)", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bitmind-lite dashboard", description="a read-only web page over a "
                                     "validator's state folder (scores, weights, accuracy per family, challenges)")
    parser.add_argument("--dir", required=True, help="the validator's --neuron.state_dir (state.db, challenges.jsonl)")
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"HOST:PORT to serve on (default {DEFAULT_ADDRESS}"
                                                                   f"; port 0: any free one)")
    parser.add_argument("--keep", type=int, default=KEEP, help="challenges the page looks back over")
    args = parser.parse_args(argv)
    try:
        host, port = parse_address(args.address, "--address")
    except ValueError as e:
        parser.error(str(e))
    if args.keep < 1:
        parser.error("--keep must be at least 1")
    view = StateView(args.dir, args.keep)
    try:
        view.check()
    except DashboardError as e:
        print(f"bitmind-lite dashboard: {e}", file=sys.stderr)
        return 2
    if warning := warn_if_public(host):
        print(f"bitmind-lite dashboard: warning: {warning}", file=sys.stderr)
    try:
        asyncio.run(_serve_until_stopped(view.dir, host, port, args.keep))
    except OSError as e:
        print(f"bitmind-lite dashboard: cannot serve on {args.address}: {e.strerror or e}; choose another with "
              f"--address", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
