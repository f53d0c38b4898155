"""Validator fan-out speed: one challenge round against N fake miners on loopback that answer instantly.

    python bench/validator.py [--miners 256] [--rounds 20] [--json bench/results/validator.json]

The miners run in a separate process (tests/fake_miners.py: one port and one hotkey each, signatures verified),
so the validator's CPU time is its own: signing, sending, reading and validating. Goals: <= 0.2 s wall for a
256-miner round and <= 0.5 ms of validator CPU per request. `--gap S --gap-rounds K` also runs K rounds spaced S
seconds apart (e.g. 5, uvicorn's idle timeout) and counts requests lost to stale keep-alive connections.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bittensor.sp_core import Keypair  # noqa: E402

from bitmind_lite.protocol import encode_image  # noqa: E402
from bitmind_lite.validator.query import MinerClient, Target, challenge_body  # noqa: E402


def start_fake_miners(n: int, tmp: Path) -> tuple[subprocess.Popen, list[Target]]:
    ready = tmp / "miners.json"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_miners.py"), "--ready", str(ready),
                             *(["ok:0.5"] * n)], start_new_session=True)
    deadline = time.time() + 120
    while not ready.exists():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("fake miners did not start")
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    return proc, [Target(i, m["hotkey"], "127.0.0.1", m["port"]) for i, m in enumerate(info)]


def challenge(fmt: str, seed: int) -> bytes:
    """A challenge from the validator's own sampler (bundled photos + procedural fakes), encoded as the loop does."""
    import numpy as np

    from bitmind_lite.data import ChallengeSampler

    image, _label, _meta = ChallengeSampler().sample(np.random.default_rng(seed))
    return challenge_body(encode_image(image, format=fmt))


async def run_rounds(client: MinerClient, targets, body, rounds: int, gap: float = 0.0) -> list[dict]:
    out = []
    for _ in range(rounds):
        if gap:
            await asyncio.sleep(gap)
        cpu0, t0 = time.process_time(), time.perf_counter()
        answers = await client.query_all(targets, body)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        lat = sorted(a.latency for a in answers)
        out.append({"wall_s": wall, "cpu_ms_per_req": cpu / len(targets) * 1e3,
                    "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1e3,
                    "errors": sum(not a.valid for a in answers),
                    "error_kinds": sorted({a.error for a in answers if a.error})[:3]})
    return out


async def bench(args) -> dict:
    load_before = os.getloadavg()[0]  # other work on this box inflates both numbers; keep it next to them
    with tempfile.TemporaryDirectory() as tmp:
        proc, targets = start_fake_miners(args.miners, Path(tmp))
        try:
            body = challenge(args.format, args.seed)
            client = MinerClient(Keypair.create_from_uri("//bench-validator"), timeout=args.timeout)
            async with client:
                await run_rounds(client, targets, body, args.warmup)
                timed = await run_rounds(client, targets, body, args.rounds)
                gap = await run_rounds(client, targets, body, args.gap_rounds, args.gap) if args.gap_rounds else []
        finally:
            proc.terminate()
            proc.wait(10)
    walls = sorted(r["wall_s"] for r in timed)
    summary = {
        "miners": args.miners, "rounds": args.rounds, "body_bytes": len(body), "image_format": args.format,
        "round_wall_s_median": statistics.median(walls), "round_wall_s_min": walls[0], "round_wall_s_max": walls[-1],
        "validator_cpu_ms_per_req_median": statistics.median(r["cpu_ms_per_req"] for r in timed),
        "req_p50_ms_median": statistics.median(r["p50_ms"] for r in timed),
        "req_p99_ms_median": statistics.median(r["p99_ms"] for r in timed),
        "errors": sum(r["errors"] for r in timed),
        "gap_s": args.gap if gap else None, "gap_rounds": len(gap),
        "gap_errors": sum(r["errors"] for r in gap), "gap_error_kinds": sorted({k for r in gap for k in r["error_kinds"]}),
        "goal_wall_s": 0.2, "goal_cpu_ms_per_req": 0.5,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_avg_1m_before": round(load_before, 2),
    }
    summary["meets_goals"] = (summary["round_wall_s_median"] <= 0.2 and summary["validator_cpu_ms_per_req_median"] <= 0.5
                              and summary["errors"] == 0)
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=9.0)
    parser.add_argument("--format", default="PNG", choices=["PNG", "JPEG", "WEBP"],
                        help="challenge image encoding (the validator sends PNG)")
    parser.add_argument("--seed", type=int, default=0, help="which challenge to send")
    parser.add_argument("--gap", type=float, default=5.0, help="seconds between the spaced rounds")
    parser.add_argument("--gap-rounds", type=int, default=0, help="rounds spaced --gap apart (0 = skip)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "validator.json"))
    args = parser.parse_args(argv)
    s = asyncio.run(bench(args))
    rows = [("miners per round", s["miners"]), ("challenge body", f"{s['body_bytes']:,} B ({s['image_format']})"),
            ("round wall, median [min-max]", f"{s['round_wall_s_median']*1e3:.0f} ms [{s['round_wall_s_min']*1e3:.0f}-"
                                             f"{s['round_wall_s_max']*1e3:.0f}]  (goal <= 200)"),
            ("validator CPU per request", f"{s['validator_cpu_ms_per_req_median']:.3f} ms  (goal <= 0.5)"),
            ("request latency p50 / p99", f"{s['req_p50_ms_median']:.1f} / {s['req_p99_ms_median']:.1f} ms"),
            ("errors in timed rounds", s["errors"]),
            ("load average before (1 min)", f"{s['load_avg_1m_before']:.2f} on {os.cpu_count()} cores")]
    if s["gap_rounds"]:
        rows.append((f"errors, {s['gap_rounds']} rounds {s['gap_s']:g} s apart", s["gap_errors"]))
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"{'meets goals':<{width}}  {s['meets_goals']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(s, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
