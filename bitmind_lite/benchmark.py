"""`bitmind-lite bench`: what a detector, or a live miner, would earn from this subnet's validators, before it
registers.

    bitmind-lite bench --detector npr [--weights PATH] [--n 200] [--families offline] [--seed 0] [--json OUT]
    bitmind-lite bench --endpoint http://127.0.0.1:8091 --wallet.name vali --wallet.hotkey default [--plot OUT.png]

Challenges come from the validator's own ChallengeSampler (the same real pool, fake mix and augmentation levels as
`--neuron.real` / `--neuron.fake`), one at a time, so each latency is one answer's and not a queue's. A detector
is called in this process; a live miner is queried as a validator queries it: validator/query.py's MinerClient
(btauth/1 signed by the wallet's hotkey for the miner's hotkey, which its /health says). The miner admits the bench
as it admits a validator: the hotkey must be registered with a permit and enough stake, or the miner must run with
`--blacklist.allow_non_registered` (testing only; a devnet is the easy way).

The answers are scored by the validator's code (validator/reward.py): `reward` is what a validator that had sent
exactly these challenges would compute now (MCC and Brier over its last 100 valid answers, accuracy over the last
10, times the valid share and the calibration term), and `mean_reward` is the average of the per-challenge rewards
its score moves towards (an EMA of them), warm-up zeros included. Accuracy is reported per family (`real` for real
photos) and per source (the real pool, or the fake's generator kind); MCC, Brier, AP and AUC overall
(base_miner/metrics.py); p50/p95 over the answered challenges.

Exit status: 0 done; 2 bad input (unknown detector, unusable weights, bad mix, unreachable endpoint, keys the miner
refuses) with one line saying so.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urlsplit

import numpy as np

EXIT_BAD_INPUT = 2


class BenchError(Exception):
    """Bad input: the message is the one line the operator sees."""


@dataclass
class Result:
    """One challenge and its answer; prediction None = invalid (error says why)."""

    label: int
    family: str  # generator family, or "real"
    source: str  # real pool spec for a real photo, generator kind for a fake
    prediction: Optional[float]
    latency_ms: float
    error: Optional[str] = None


def challenges(sampler, n: int, seed: int) -> Iterator[tuple]:
    """(image, label, family, source) for n challenges of `sampler` (a ChallengeSampler), reproducible by seed."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        image, label, meta = sampler.sample(rng)
        source = meta["generator_params"]["kind"] if label else meta["real_source"]
        yield image, int(label), meta["family"], source


# ---- answers ----
def detector_results(detector, items) -> list[Result]:
    out = []
    for image, label, family, source in items:
        start = time.perf_counter()
        p = float(detector.predict_images([image])[0])
        out.append(Result(label, family, source, p, (time.perf_counter() - start) * 1000))
    return out


def miner_identity(url: str, timeout: float) -> dict:
    """The miner's /health (hotkey, detector, version, uid): who to sign for. BenchError when it cannot be read."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/health", timeout=timeout)
        r.raise_for_status()
        health = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise BenchError(f"cannot reach a miner at {url}: {type(e).__name__}: {e}") from None
    if not isinstance(health, dict) or not isinstance(health.get("hotkey"), str):
        raise BenchError(f"{url}/health does not look like a bitmind-lite miner's (no hotkey): {str(health)[:120]}")
    return health


def endpoint_address(url: str) -> tuple[str, str, int]:
    """--endpoint -> (base URL, host, port); BenchError unless it is http://HOST:PORT."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise BenchError(f"--endpoint {url!r}: expected http://HOST:PORT (miners serve plain HTTP)")
    return f"http://{parts.netloc}", parts.hostname, port


async def endpoint_results(target, keypair, items, timeout: float, per_minute: float) -> list[Result]:
    """Query `target` once per challenge with the validator's client, at most `per_minute` (0: no pacing)."""
    from bitmind_lite.protocol import encode_image
    from bitmind_lite.validator.query import MinerClient, challenge_body

    out, gap, last = [], 60.0 / per_minute if per_minute > 0 else 0.0, -float("inf")
    async with MinerClient(keypair, timeout) as client:
        for image, label, family, source in items:
            body = challenge_body(encode_image(image))
            await asyncio.sleep(max(0.0, last + gap - time.monotonic()))
            last = time.monotonic()
            answer = await client.query(target, body)
            if not out and answer.status in (401, 403):  # every later request would be refused the same way
                raise BenchError(f"the miner refuses this hotkey ({keypair.ss58_address}): {answer.error}")
            out.append(Result(label, family, source, answer.prediction, answer.latency * 1000, answer.error))
    return out


# ---- scoring ----
def _accuracy(group: list[Result]) -> dict:
    valid = [r for r in group if r.prediction is not None]
    right = sum((r.prediction > 0.5) == bool(r.label) for r in valid)
    return {"n": len(group), "valid": len(valid), "acc": right / len(valid) if valid else None,
            "mean_p": float(np.mean([r.prediction for r in valid])) if valid else None}


def _grouped(results: list[Result], key: str) -> dict:
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(getattr(r, key), []).append(r)
    return {name: _accuracy(groups[name]) for name in sorted(groups, key=lambda g: (g != "real", g))}


def score(results: list[Result], min_valid: Optional[int] = None) -> dict:
    """Everything the table, the JSON and the plot show, from the answers alone."""
    from base_miner.metrics import binary_metrics
    from bitmind_lite.validator.reward import MIN_VALID, History, challenge_reward, metrics

    min_valid = MIN_VALID if min_valid is None else min_valid
    history = History()
    rewards = [challenge_reward(history, r.prediction, r.label, min_valid)[0] for r in results]
    valid = [r for r in results if r.prediction is not None]
    latencies = [r.latency_ms for r in valid]
    overall = binary_metrics([r.label for r in valid], [r.prediction for r in valid], reward_windows=0) \
        if valid else None
    if overall is not None:
        overall.pop("reward")  # the validator's own numbers are below, from the answers in order
    p50, p95 = np.percentile(latencies, [50, 95]).tolist() if latencies else (None, None)
    return {"answers": len(results), "valid": len(valid),
            "validator": metrics(history, min_valid).as_dict(), "mean_reward": float(np.mean(rewards)),
            "overall": overall, "latency_ms": {"p50": p50, "p95": p95},
            "invalid": dict(Counter(r.error for r in results if r.prediction is None).most_common()),
            "by_family": _grouped(results, "family"), "by_source": _grouped(results, "source")}


# ---- output ----
def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_report(report: dict) -> str:
    from bitmind_lite.validator.reward import MIN_VALID

    s, v, o = report["scores"], report["scores"]["validator"], report["scores"]["overall"] or {}
    c, lat = report["challenges"], report["scores"]["latency_ms"]
    warm_up = f"; no reward before {MIN_VALID} valid answers" if v["valid"] < MIN_VALID else ""
    lines = [f"bench {report['target']['name']} on {c['n']} challenges (fakes {c['families']}, reals {c['real']}, "
             f"seed {c['seed']}, {c['size']} px)",
             f"reward {v['reward']:.4f}  (validator formula over its window: MCC {v['mcc']:.3f}, accuracy of the "
             f"last 10 {v['accuracy']:.2f}, Brier {v['brier']:.3f}, {v['valid']}/{v['answers']} valid{warm_up})",
             f"mean reward per challenge {s['mean_reward']:.4f}   latency p50 {_f(lat['p50'], 1)} ms  "
             f"p95 {_f(lat['p95'], 1)} ms",
             f"overall acc {_f(o.get('acc'))}  MCC {_f(o.get('mcc'))}  Brier {_f(o.get('brier'))}  "
             f"AP {_f(o.get('ap'))}  AUC {_f(o.get('auc'))}  real acc {_f(o.get('r_acc'))}  "
             f"fake acc {_f(o.get('f_acc'))}"]
    for error, n in s["invalid"].items():
        lines.append(f"invalid x{n}: {error}")
    for title, key in (("family", "by_family"), ("source", "by_source")):
        width = max([len(title)] + [len(k) for k in s[key]])
        lines += ["", f"{title:<{width}}  {'n':>5}  {'valid':>5}  {'acc':>6}  {'mean P(AI)':>10}"]
        lines += [f"{name:<{width}}  {g['n']:>5}  {g['valid']:>5}  {_f(g['acc']):>6}  {_f(g['mean_p']):>10}"
                  for name, g in s[key].items()]
    return "\n".join(lines)


def write_json(path: str, obj) -> None:
    """Atomically: a reader sees the old file or the whole new one."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def plot(report: dict, path: str) -> None:
    """Accuracy per family, and P(AI) of real photos against fakes (how separable and how calibrated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_family = {k: g for k, g in report["scores"]["by_family"].items() if g["acc"] is not None}
    fig, (acc, hist) = plt.subplots(1, 2, figsize=(11, 0.8 + 0.32 * max(len(by_family), 8)))
    names = list(by_family)[::-1]
    acc.barh([f"{k} ({by_family[k]['valid']})" for k in names], [by_family[k]["acc"] for k in names],
             color=["tab:blue" if k == "real" else "tab:orange" for k in names])
    acc.set(xlim=(0, 1), xlabel="accuracy (p > 0.5 = AI-generated)", title="per family")
    bins = np.linspace(0, 1, 21)
    for label, name, color in ((0, "real", "tab:blue"), (1, "AI-generated", "tab:orange")):
        ps = [a["prediction"] for a in report["answers"] if a["label"] == label and a["prediction"] is not None]
        hist.hist(ps, bins=bins, alpha=0.6, label=f"{name} ({len(ps)})", color=color)
    hist.axvline(0.5, color="k", lw=0.8, ls=":")
    hist.set(xlabel="P(AI-generated)", ylabel="answers", title="answers by true class")
    hist.legend(fontsize=8)
    v = report["scores"]["validator"]
    fig.suptitle(f"{report['target']['name']}: reward {v['reward']:.3f}, MCC {v['mcc']:.3f}, "
                 f"Brier {v['brier']:.3f} ({report['challenges']['n']} challenges)", fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    os.replace(tmp, path)


# ---- command line ----
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bitmind-lite bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--detector", help="a registered detector, run in this process (bitmind-lite detect --help)")
    what.add_argument("--endpoint", help="a live miner, http://HOST:PORT, queried as a validator queries it")
    p.add_argument("--weights", help="with --detector: checkpoint (default: the bundled weights/<detector>.pth)")
    p.add_argument("--device", default="auto", help="with --detector: auto | cpu | cuda")
    p.add_argument("--input-size", type=int, default=256, help="with --detector: the crop it sees (as the miner's "
                                                                "--neuron.input_size)")
    p.add_argument("--wallet.name", dest="wallet_name", default="default", help="with --endpoint: signing wallet")
    p.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default", help="with --endpoint: its hotkey")
    p.add_argument("--wallet.path", dest="wallet_path", default="~/.bittensor/wallets", help="wallets folder")
    p.add_argument("--timeout", type=float, default=9.0, help="with --endpoint: seconds per answer (the validator's)")
    p.add_argument("--per-minute", type=float, default=100.0, help="with --endpoint: most requests a minute, under "
                                                                    "the miner's --blacklist.rate_limit (0: no pacing)")
    p.add_argument("--families", default="offline", help="fake mix, as the validator's --neuron.fake "
                                                        "(bitmind-lite data families)")
    p.add_argument("--real", default="bundled", help="real photos, as the validator's --neuron.real")
    p.add_argument("--fake-prob", type=float, default=0.5, help="share of AI-generated challenges")
    p.add_argument("--size", type=int, default=256, help="challenge image size (even, >= 32)")
    p.add_argument("--n", type=int, default=200, help="challenges")
    p.add_argument("--seed", type=int, default=0, help="same seed, same challenges")
    p.add_argument("--json", help="write the report (with every answer) here")
    p.add_argument("--plot", help="write a PNG: accuracy per family, P(AI) of reals against fakes")
    return p


def run(args) -> dict:
    """The report for parsed arguments; BenchError on bad input."""
    from bitmind_lite.data import ChallengeSampler

    if args.n < 1:
        raise BenchError(f"--n must be >= 1, got {args.n}")
    target, run_on = _open_target(args)
    try:
        sampler = ChallengeSampler(real=args.real, fake=args.families, fake_prob=args.fake_prob, size=args.size,
                                   seed=args.seed)
    except ValueError as e:  # SourceError too: an unknown or unavailable family, a bad real pool
        raise BenchError(str(e)) from None
    try:
        started = time.perf_counter()
        results = run_on(challenges(sampler, args.n, args.seed))
        seconds = time.perf_counter() - started
    finally:
        sampler.close()
    return {"target": target, "seconds": round(seconds, 2),
            "challenges": {"n": args.n, "families": args.families, "real": args.real, "fake_prob": args.fake_prob,
                           "size": args.size, "seed": args.seed, "sampler": sampler.describe()},
            "scores": score(results), "answers": [asdict(r) for r in results]}


def _open_target(args):
    """(description, function from challenges to results) for --detector or --endpoint."""
    if args.detector:
        from bitmind_lite.detectors import create_detector

        try:
            detector = create_detector(args.detector, weights=args.weights, device=args.device,
                                       input_size=args.input_size)
        except (ValueError, FileNotFoundError, RuntimeError, TypeError) as e:
            raise BenchError(f"cannot load detector {args.detector!r}: {e}") from None
        from PIL import Image

        detector.predict_images([Image.new("RGB", (args.size, args.size))])  # lazy set-up is not a challenge's time
        weights = getattr(detector, "weights_path", None)
        return ({"kind": "detector", "name": detector.describe(), "device": str(detector.device),
                 "weights": str(weights) if weights else None}, lambda items: detector_results(detector, items))
    from bitmind_lite.chain import load_wallet

    from bitmind_lite.validator.query import Target

    base, host, port = endpoint_address(args.endpoint)
    health = miner_identity(base, args.timeout)
    target = Target(health["uid"] if isinstance(health.get("uid"), int) else -1, health["hotkey"], host, port)
    try:
        keypair = load_wallet(args.wallet_name, args.wallet_hotkey, args.wallet_path).hotkey
    except Exception as e:  # noqa: BLE001 - any key problem is bad input
        raise BenchError(f"cannot load the signing hotkey: {e}") from None
    name = f"{health.get('detector', '?')}/{health.get('version', '?')} at {args.endpoint}"
    return ({"kind": "endpoint", "name": name, "endpoint": args.endpoint, "hotkey": health["hotkey"],
             "uid": health.get("uid"), "signer": keypair.ss58_address},
            lambda items: asyncio.run(endpoint_results(target, keypair, items, args.timeout, args.per_minute)))


def main(argv: Optional[list[str]] = None) -> int:
    from bitmind_lite.log import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging("WARNING", stdout=False)  # stdout is the table; the validator client's warnings go to stderr
    try:
        report = run(args)
    except BenchError as e:
        print(f"bitmind-lite bench: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        write_json(args.json, report)
    if args.plot:
        plot(report, args.plot)
    print(format_report(report))
    return 0
