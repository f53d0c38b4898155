"""What a miner's operator sees: this miner's standing on chain and its last hour of traffic, per validator.

    CallerWindow     requests, answers, refusals (by ErrorKind) and p50/p95 latency per caller hotkey over the last
                     hour; bounded, fed by MinerMetrics.observe_request for every detect request
    read_standing    uid, stake, incentive, trust, rank, emission ... of one hotkey, from the SDK's metagraph row
    StandingCache    the same for a running miner, read at most once per --neuron.sync_interval, in a thread
    report           the JSON of GET /stats (on --neuron.metrics_address, else on the public port for loopback only)
    main             `bitmind-lite miner stats`: a running miner's /stats, or (no miner needed) the chain's view

The window is bounded whoever calls: counts are kept per minute (at most 61 buckets per caller), latencies as the
last MAX_SAMPLES answered requests, at most MAX_CALLERS hotkeys (when full, a caller that was never answered is
forgotten first, so a spray of fresh keys cannot push real validators out). Requests whose signature did not verify
carry no hotkey worth trusting and share one row, UNAUTHENTICATED.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, OrderedDict, deque
from typing import Callable, Optional

import numpy as np

from bitmind_lite.protocol import ErrorKind

WINDOW_S = 3600.0
MAX_CALLERS = 256
MAX_SAMPLES = 1024  # latency samples per caller; counts stay exact beyond it
UNAUTHENTICATED = "unauthenticated"
KIND_BY_STATUS = {kind.status: kind.value for kind in ErrorKind}  # one status per kind (protocol.py)


class _Caller:
    __slots__ = ("minutes", "times", "seconds", "last_seen")

    def __init__(self):
        self.minutes: deque[list] = deque()  # [minute, requests, answered, Counter(refusal kind)]
        self.times: deque[float] = deque(maxlen=MAX_SAMPLES)  # answered requests: when, and how long they took
        self.seconds: deque[float] = deque(maxlen=MAX_SAMPLES)
        self.last_seen = 0.0

    def prune(self, now: float, window: float) -> None:
        oldest_minute = int((now - window) // 60)
        while self.minutes and self.minutes[0][0] < oldest_minute:
            self.minutes.popleft()
        while self.times and self.times[0] < now - window:
            self.times.popleft()
            self.seconds.popleft()

    def answered(self) -> int:
        return sum(m[2] for m in self.minutes)


class CallerWindow:
    """Per-caller outcomes over the last `window` seconds (to the minute). Used from the event loop thread only."""

    def __init__(self, window: float = WINDOW_S, max_callers: int = MAX_CALLERS,
                 clock: Callable[[], float] = time.monotonic):
        self.window, self.max_callers, self.clock = window, max_callers, clock
        self._callers: OrderedDict[str, _Caller] = OrderedDict()  # least recently seen first

    def record(self, caller: Optional[str], status: int, seconds: float) -> None:
        now, key = self.clock(), caller or UNAUTHENTICATED
        entry = self._callers.pop(key, None) or _Caller()
        self._callers[key] = entry
        entry.prune(now, self.window)
        minute = int(now // 60)
        if not entry.minutes or entry.minutes[-1][0] != minute:
            entry.minutes.append([minute, 0, 0, Counter()])
        bucket = entry.minutes[-1]
        bucket[1] += 1
        if status == 200:
            bucket[2] += 1
            entry.times.append(now)
            entry.seconds.append(seconds)
        else:
            bucket[3][KIND_BY_STATUS.get(status, str(status))] += 1
        entry.last_seen = now
        if len(self._callers) > self.max_callers:
            self._forget_one()

    def _forget_one(self) -> None:
        never_answered = next((k for k, c in self._callers.items() if c.answered() == 0), None)
        self._callers.pop(never_answered if never_answered is not None else next(iter(self._callers)))

    def summary(self) -> list[dict]:
        """One row per caller seen in the window, most requests first."""
        now, rows = self.clock(), []
        for key, entry in list(self._callers.items()):
            entry.prune(now, self.window)
            if not entry.minutes:
                del self._callers[key]
                continue
            refusals = sum((m[3] for m in entry.minutes), Counter())
            p50, p95 = (np.percentile(entry.seconds, [50, 95]) * 1000).tolist() if entry.seconds else (None, None)
            rows.append({"hotkey": key, "requests": sum(m[1] for m in entry.minutes), "answered": entry.answered(),
                         "refusals": dict(sorted(refusals.items())), "p50_ms": p50, "p95_ms": p95,
                         "last_seen_s": round(now - entry.last_seen, 1)})
        return sorted(rows, key=lambda r: (-r["requests"], r["hotkey"]))


# ---- standing on chain ----
def read_standing(chain, hotkey: str, network: Optional[str] = None) -> dict:
    """This hotkey's row of the metagraph: uid, stake, incentive, trust, rank, emission, ... (blocking).

    From the SDK's own `MetagraphNeuron`, because the nodes' MetagraphSnapshot keeps only what the gate needs.
    Raises ChainUnavailable when the chain cannot be reached, ValueError when the subnet does not exist."""
    from bitmind_lite.chain.client import UNREACHABLE, ChainUnavailable

    try:
        mg = chain.subtensor.subnets.metagraph(chain.netuid, commitments=False)
    except UNREACHABLE as e:
        raise ChainUnavailable(f"chain {chain.network!r} unreachable: {e}") from e
    if mg is None:
        raise ValueError(f"subnet {chain.netuid} does not exist on {chain.network!r}")
    out = {"network": network or chain.network, "netuid": chain.netuid, "block": mg.block, "hotkey": hotkey}
    n = mg.by_hotkey(hotkey)
    if n is None:
        return {**out, "registered": False}
    return {**out, "registered": True, "uid": n.uid, "stake": n.total_stake.rao / 1e9, "incentive": n.incentive,
            "trust": n.trust, "rank": n.rank, "consensus": n.consensus, "dividends": n.dividends,
            "emission": n.emission.rao / 1e9, "validator_permit": bool(n.validator_permit), "endpoint": n.axon,
            "registered_at": n.block_at_registration, "last_update": n.last_update}


def weights_on(chain, uid: int) -> list[dict]:
    """The validators whose weights on chain include `uid`: [{uid, hotkey, stake, weight}], largest weight first."""
    snapshot = chain.metagraph()
    rows = []
    for vuid, row in chain.weights().items():
        if row.get(uid) and (v := snapshot.by_uid(vuid)) is not None:
            rows.append({"uid": vuid, "hotkey": v.hotkey, "stake": v.stake, "weight": row[uid]})
    return sorted(rows, key=lambda r: -r["weight"])


class StandingCache:
    """read_standing for a serving miner: in a worker thread, at most once per `ttl` seconds; when the chain cannot
    answer, the last good reading is returned with the error beside it."""

    def __init__(self, ttl: float):
        self.ttl, self._value, self._at = ttl, None, -float("inf")
        self._lock = asyncio.Lock()

    async def get(self, chain, hotkey: str, network: Optional[str] = None) -> dict:
        async with self._lock:  # two /stats at once read the chain once
            if time.monotonic() - self._at >= self.ttl:
                try:
                    self._value = await asyncio.to_thread(read_standing, chain, hotkey, network)
                except Exception as e:  # noqa: BLE001 - a page for operators: say what failed, never a 500
                    return {**(self._value or {"hotkey": hotkey}), "error": f"{type(e).__name__}: {e}"}
                self._at = time.monotonic()
            return self._value


def report(service, standing: dict) -> dict:
    """The /stats JSON of a running miner (`service` is its MinerService)."""
    detector, gate = service.detector, service.gate
    validators = service.metrics.by_caller.summary()
    for row in validators:
        neuron = gate.neuron(row["hotkey"])
        row["uid"], row["stake"] = (neuron.uid, neuron.stake) if neuron is not None else (None, None)
    return {"hotkey": service.hotkey_ss58, "chain": standing,
            "model": {"detector": detector.name, "version": detector.version, "device": str(detector.device),
                      "runtime": getattr(detector, "runtime", "eager"),
                      "weights": str(getattr(detector, "weights_path", None) or "") or None},
            "uptime_s": round(time.monotonic() - service.started, 1), "window_s": service.metrics.by_caller.window,
            "validators": validators}


# ---- `bitmind-lite miner stats` ----
def _num(value, unit: str = "", digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def format_standing(c: dict) -> list[str]:
    head = f"hotkey {c.get('hotkey')} on netuid {c.get('netuid', '?')} ({c.get('network', '?')})"
    if c.get("block") is not None:
        head += f" at block {c['block']}"
    lines = [head]
    if c.get("registered"):
        lines.append(f"  uid {c['uid']}   stake {_num(c['stake'], ' α', 3)}   incentive {_num(c['incentive'])}   "
                     f"trust {_num(c['trust'])}   rank {_num(c['rank'])}   emission {_num(c['emission'], ' α', 6)}")
        lines.append(f"  endpoint {c.get('endpoint') or 'not published'}   registered at block {c['registered_at']}")
    elif c.get("registered") is False:
        lines.append("  NOT registered on this subnet: validators do not query it")
    if c.get("error"):
        lines.append(f"  chain: {c['error']}")
    return lines


def format_report(r: dict) -> str:
    lines = format_standing(r.get("chain") or {})
    if "model" in r:
        m = r["model"]
        lines.append(f"  model {m['detector']}/{m['version']} on {m['device']} (runtime {m['runtime']}), "
                     f"up {_duration(r['uptime_s'])}")
        lines += ["", f"{'validator (last ' + _duration(r['window_s']) + ')':<50} {'uid':>4} {'stake':>10} "
                      f"{'requests':>8} {'answered':>8} {'p50 ms':>7} {'p95 ms':>7}  refusals"]
        for v in r["validators"]:
            refusals = " ".join(f"{k}={n}" for k, n in v["refusals"].items()) or "-"
            lines.append(f"{v['hotkey']:<50} {'-' if v['uid'] is None else v['uid']:>4} "
                         f"{_num(v['stake'], '', 1):>10} {v['requests']:>8} {v['answered']:>8} "
                         f"{_num(v['p50_ms'], '', 1):>7} {_num(v['p95_ms'], '', 1):>7}  {refusals}")
        if not r["validators"]:
            lines.append("(no detect requests in the window)")
    if "weights" in r:
        lines += ["", f"{'validators weighting this uid':<50} {'uid':>4} {'stake':>10} {'weight':>8}"]
        lines += [f"{w['hotkey']:<50} {w['uid']:>4} {w['stake']:>10.1f} {w['weight']:>8.4f}" for w in r["weights"]]
        if not r["weights"]:
            lines.append("(none yet)")
    return "\n".join(lines)


def _stats_url(address: str) -> str:
    address = address if "://" in address else f"http://{address}"
    return address.rstrip("/") + ("" if address.rstrip("/").endswith("/stats") else "/stats")


def _local_address(cfg) -> str:
    """Where this machine's miner answers /stats, from its own settings (a wildcard bind is reached on loopback)."""
    host, _, port = (cfg.neuron.metrics_address or f"{cfg.axon.ip}:{cfg.axon.port}").rpartition(":")
    host = host.strip("[]")
    return f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"


def fetch_report(url: str, timeout: float) -> dict:
    """GET a running miner's /stats; ConnectionError with one line when it cannot be read."""
    import httpx

    try:
        r = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as e:
        raise ConnectionError(f"no miner answering at {url}: {type(e).__name__}: {e}") from None
    if r.status_code != 200:
        detail = r.text[:200].strip()
        raise ConnectionError(f"{url} answered HTTP {r.status_code}{': ' + detail if detail else ''}")
    return r.json()


def chain_report(cfg, hotkey: Optional[str]) -> dict:
    """Standing and the validators' weights from the chain alone: no miner process needed."""
    from bitmind_lite.chain import Chain, connect, load_wallet

    if hotkey is None:
        hotkey = load_wallet(cfg.wallet.name, cfg.wallet.hotkey, cfg.wallet.path).hotkey.ss58_address
    chain = Chain(connect(cfg.subtensor.network), cfg.netuid)
    try:
        standing = read_standing(chain, hotkey, cfg.subtensor.network)
        return {"chain": standing, "weights": weights_on(chain, standing["uid"]) if standing["registered"] else []}
    finally:
        chain.close()


def main(argv: Optional[list[str]] = None) -> int:
    """`bitmind-lite miner stats`: exit 0 shown; 2 nothing to show (no miner at --url, unreadable chain or keys)."""
    parser = argparse.ArgumentParser(
        prog="bitmind-lite miner stats", allow_abbrev=False,  # the rest are the miner's flags: never abbreviations
        description="A miner's own view: its standing on chain (uid, stake, incentive, trust, rank, emission) and, "
                    "from a running miner, requests, latency and refusals per validator over the last hour.",
        epilog="The miner's own settings also apply (flags, environment, .env.miner): --subtensor.network, --netuid, "
               "--wallet.name/--wallet.hotkey/--wallet.path, --neuron.metrics_address, --axon.port. Without --url "
               "or --chain: the miner on this machine, else the chain.")
    parser.add_argument("--url", help="a running miner's operator address (--neuron.metrics_address), or its public "
                                      "port from the same machine: HOST:PORT or http://HOST:PORT")
    parser.add_argument("--chain", action="store_true", help="read the chain only (no running miner needed)")
    parser.add_argument("--hotkey", help="with --chain: this ss58 address instead of the wallet's hotkey")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the miner")
    args, rest = parser.parse_known_args(argv)
    from bitmind_lite.config import MinerConfig, load_config

    cfg = load_config(MinerConfig, rest, prog="bitmind-lite miner stats", default_env_file=".env.miner")
    try:
        if args.chain or args.hotkey:
            result = chain_report(cfg, args.hotkey)
        elif args.url:
            result = fetch_report(_stats_url(args.url), args.timeout)
        else:
            try:
                result = fetch_report(_stats_url(_local_address(cfg)), args.timeout)
            except ConnectionError as e:
                print(f"{e}; reading the chain instead", file=sys.stderr)
                result = chain_report(cfg, None)
    except Exception as e:  # noqa: BLE001 - keys, chain or miner: one line, exit 2
        print(f"bitmind-lite miner stats: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0
