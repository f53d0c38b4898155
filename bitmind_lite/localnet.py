"""`bitmind-lite localnet`: a whole subnet on this machine, with no chain and no internet.

    bitmind-lite localnet [--miners 3] [--rounds 30] [--dir D] [--json OUT]

1. a devnet (the real bittensor SDK over a SQLite file) and unencrypted wallets in D;
2. one validator (stake, permit) and N miners registered; the miners start as separate processes
   (`python -m bitmind_lite.cli miner ...`, so an installed package works without the repository) on free ports:
   the first runs NPR with the bundled weights, the others honest alternatives from the detector registry
   (npr_raw, random, ...);
3. the validator (built by `validator.run.build_validator`, driven through `Validator`'s public methods) runs N
   challenges at a fast interval, printing one line per challenge, and sets weights on the devnet through the same
   SDK calls it uses on finney; its dashboard (validator/dashboard.py) is served meanwhile, at the URL printed;
4. a leaderboard (also written as JSON), then every process is stopped: SIGTERM to its process group, SIGKILL after
   a grace period; the same on Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
NETUID = 1
MARKER = "localnet.marker"
BLOCK_TIME = 0.5  # seconds per devnet block: fast enough for an epoch every few seconds
WEIGHTS_RATE_LIMIT = 4  # blocks between two set_weights of one validator (2 s)
EPOCH_LENGTH = 8  # blocks between the validator's weight setting (4 s)
ALTERNATIVES = ("npr_raw", "random")  # detectors for miners 2..N, in turn
GRACE_S = 10.0


@dataclass
class MinerProcess:
    name: str
    detector: str
    port: int
    hotkey: str
    proc: subprocess.Popen
    log: Path
    uid: Optional[int] = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_dir(path: Optional[str]) -> tuple[Path, bool]:
    """(run folder, remove it at the end). A folder from an earlier localnet is cleared; any other non-empty
    folder is refused, so a typo cannot wipe someone's files."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="bitmind-localnet-")), True
    root = Path(path).expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise SystemExit(f"localnet: {root} is not empty and was not made by localnet; pick another --dir")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by bitmind-lite localnet; cleared on the next run\n")
    return root, False


def miner_detectors(n: int) -> list[str]:
    return ["npr"] + [ALTERNATIVES[i % len(ALTERNATIVES)] for i in range(n - 1)]


def start_miner(root: Path, devnet: Path, name: str, detector: str, weights: Optional[Path]) -> MinerProcess:
    from bitmind_lite.chain import create_wallet

    wallet = create_wallet(name, "default", str(root / "wallets"))
    port = free_port()
    log = root / "logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "bitmind_lite.cli", "miner", "--netuid", str(NETUID),
           "--subtensor.network", f"devnet:{devnet}", "--wallet.name", name, "--wallet.hotkey", "default",
           "--wallet.path", str(root / "wallets"), "--axon.ip", "127.0.0.1", "--axon.port", str(port),
           "--axon.external_ip", "127.0.0.1", "--neuron.detector", detector, "--neuron.device", "cpu",
           "--neuron.threads", "1", "--neuron.sync_interval", "2", "--logging.level", "INFO"]
    if weights is not None:
        cmd += ["--neuron.weights", str(weights)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BTCLI_TOKEN_SYMBOLS_CACHE": str(root / "symbols.json")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=ROOT, start_new_session=True)  # own process group: stopped as a whole
    return MinerProcess(name, detector, port, wallet.hotkey.ss58_address, proc, log)


def wait_healthy(miners: list[MinerProcess], timeout: float) -> None:
    pending = {m.name: m for m in miners}
    deadline = time.monotonic() + timeout
    while pending:
        for name, m in list(pending.items()):
            if m.proc.poll() is not None:
                tail = "\n".join(m.log.read_text(errors="replace").splitlines()[-15:])
                raise RuntimeError(f"miner {name} exited with status {m.proc.returncode}; last lines of {m.log}:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/health", timeout=1) as r:
                    if r.status == 200:
                        del pending[name]
            except OSError:
                pass
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"miners {sorted(pending)} not healthy after {timeout:.0f} s (logs in {miners[0].log.parent})")
        time.sleep(0.3)


def stop_processes(procs: list[subprocess.Popen], grace: float = GRACE_S) -> None:
    """SIGTERM every process group, wait up to `grace` seconds, then SIGKILL what is left."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)


def progress_line(report, uid_names: dict[int, str], rounds: int) -> str:
    if report.skipped:
        return f"  round {report.step + 1:>3}/{rounds}: skipped ({report.skipped})"
    truth = "AI " if report.label else "real"
    cells = []
    for a in sorted(report.answers, key=lambda a: a.uid):
        name = uid_names.get(a.uid, f"uid{a.uid}")
        if a.prediction is None:
            cells.append(f"{name} --- ✗")
        else:
            cells.append(f"{name} {a.prediction:.2f} {'✓' if (a.prediction > 0.5) == bool(report.label) else '✗'}")
    source = "/".join(str(x) for x in (report.meta.get("source"), report.meta.get("family")) if x)
    weights = f"  | weights set @ block {report.weights.block}" if report.weights and report.weights.set else ""
    return f"  round {report.step + 1:>3}/{rounds}: {truth} {source[:28]:<28} " + "  ".join(cells) + weights


def set_final_weights(validator, last_report, timeout: float = 15.0):
    """Make the weights on chain reflect the final scores, so the leaderboard shows where the run ended.

    Weights set in the last round already do (scores are updated before weights in a round); otherwise wait out
    the devnet's rate limit, then set them."""
    if last_report is not None and last_report.weights is not None and last_report.weights.set:
        return last_report.weights
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = validator.state.last_weights_block
        if last is not None and validator.chain.block() < last + WEIGHTS_RATE_LIMIT:
            time.sleep(BLOCK_TIME / 2)  # an attempt now would only be refused (and logged as a warning)
            continue
        outcome = validator.set_weights_now()
        if outcome.reason != "RATE_LIMITED":
            return outcome
        time.sleep(BLOCK_TIME)
    return None


def leaderboard(validator, miners: list[MinerProcess], chain_weights: dict[int, float]) -> list[dict]:
    from bitmind_lite.validator.dashboard_data import miner_row
    from bitmind_lite.validator.reward import reward

    rows = []
    for m in miners:
        record = validator.state.miners.get(m.uid)
        if record is None:
            continue
        rows.append({**miner_row(m.uid, record), "name": m.name, "detector": m.detector,
                     "reward": round(reward(record.history, validator.cfg.neuron.min_valid), 4),
                     "weight": round(chain_weights.get(m.uid, 0.0), 4)})
    return sorted(rows, key=lambda r: -r["weight"])


async def run_validator(validator, rounds: int, on_round, dashboard: Optional[tuple[str, int]]) -> None:
    """The challenge loop, with the validator's dashboard served from the same event loop while it runs.

    Ctrl-C sets the validator's stop event (it finishes the challenge in flight) and then raises KeyboardInterrupt
    here. Why not asyncio.run's own SIGINT handling: it cancels the task, and on a loaded machine that cancel can
    land inside a query's `asyncio.timeout` as it expires, which (Python 3.11) reports a timeout instead and the
    rounds go on.
    """
    from bitmind_lite.validator import dashboard as dash

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    runner = None
    if dashboard is not None:
        runner = await dash.serve(validator.cfg.neuron.state_dir, *dashboard)
        print(f"dashboard: {dash.url(runner)} (while the localnet runs)", flush=True)
    try:
        await validator.run(rounds=rounds, stop=stop, on_round=on_round)
    finally:
        if runner is not None:
            await runner.cleanup()
    if stop.is_set():
        raise KeyboardInterrupt


def family_accuracy(reports, miners: list[MinerProcess]) -> dict[str, dict]:
    """{miner name: {family: {"n": answers, "accuracy": share right}}}: how each miner does per generator family
    (and on "real"), from the rounds of this run (the same records as challenges.jsonl)."""
    names = {m.uid: m.name for m in miners}
    tally: dict[str, dict[str, list[int]]] = {}
    for r in reports:
        if r.skipped:
            continue
        family = r.meta.get("family") or "unknown"
        for a in r.answers:
            if a.prediction is None or a.uid not in names:
                continue
            cell = tally.setdefault(names[a.uid], {}).setdefault(family, [0, 0])
            cell[0] += 1
            cell[1] += int((a.prediction > 0.5) == bool(r.label))
    return {m: {f: {"n": n, "accuracy": round(k / n, 4)} for f, (n, k) in sorted(fams.items())}
            for m, fams in tally.items()}


def print_family_table(per_family: dict[str, dict]) -> None:
    families = sorted({f for fams in per_family.values() for f in fams}, key=lambda f: (f != "real", f))
    if not families:
        return
    print("\naccuracy per family (answers)")
    print(f"{'family':<24}" + "".join(f"{m:>14}" for m in per_family))
    for f in families:
        cells = []
        for m in per_family:
            c = per_family[m].get(f)
            cells.append(f"{c['accuracy']:>8.2f} ({c['n']:>3})" if c else f"{'-':>14}")
        print(f"{f:<24}" + "".join(cells))


def print_leaderboard(rows: list[dict]) -> None:
    head = f"{'uid':>3}  {'miner':<8} {'detector':<8} {'valid':>7} {'accuracy':>8} {'MCC':>6} {'score':>7} {'weight':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['uid']:>3}  {r['name']:<8} {r['detector']:<8} {r['valid']:>3}/{r['answers']:<3} {r['accuracy']:>8.2f} "
              f"{r['mcc']:>6.2f} {r['score']:>7.3f} {r['weight']:>7.3f}")


def run(args) -> dict:
    from bitmind_lite.chain import Chain, Devnet, connect, create_wallet
    from bitmind_lite.config import ValidatorConfig
    from bitmind_lite.detectors import default_weights
    from bitmind_lite.log import setup_logging
    from bitmind_lite.validator.run import build_validator

    setup_logging(args.log_level)
    root, temporary = prepare_dir(args.dir)
    os.environ.setdefault("BTCLI_TOKEN_SYMBOLS_CACHE", str(root / "symbols.json"))
    started = time.monotonic()
    miners: list[MinerProcess] = []
    validator, finished = None, False
    try:
        db = root / "devnet.db"
        devnet = Devnet.create(db, netuid=NETUID, tempo=EPOCH_LENGTH, block_time=BLOCK_TIME,
                               weights_rate_limit=WEIGHTS_RATE_LIMIT)
        vali = create_wallet("validator", "default", str(root / "wallets"))
        vali_uid = devnet.register(vali.hotkey.ss58_address, stake=10_000.0, validator_permit=True)
        npr_weights = default_weights("npr")
        print(f"localnet in {root}: devnet netuid {NETUID}, validator uid {vali_uid}; NPR weights: "
              f"{npr_weights or 'none bundled yet (the NPR miner answers with an untrained network)'}")
        for i, detector in enumerate(miner_detectors(args.miners)):
            m = start_miner(root, db, f"miner{i + 1}", detector, npr_weights if detector == "npr" else None)
            m.uid = devnet.register(m.hotkey, stake=0.0)
            miners.append(m)
            print(f"  miner{i + 1}: uid {m.uid}, detector {detector}, http://127.0.0.1:{m.port} (log {m.log})")
        print(f"waiting for {len(miners)} miners to load their models ...", flush=True)
        wait_healthy(miners, timeout=args.start_timeout)
        cfg = ValidatorConfig.model_validate({
            "netuid": NETUID, "subtensor": {"network": f"devnet:{db}"},
            "wallet": {"name": "validator", "hotkey": "default", "path": str(root / "wallets")},
            "logging": {"level": args.log_level},
            "neuron": {"challenge_interval": args.interval, "sample_size": max(1, args.miners), "timeout": args.timeout,
                       "moving_average_alpha": args.alpha, "epoch_length": EPOCH_LENGTH, "sync_interval": 2.0,
                       "state_dir": str(root / "validator"), "rounds": args.rounds, "seed": args.seed,
                       # a small pool (in STATE_DIR/challenge-cache) fills in seconds, so even the slow offline
                       # generators rarely make a round wait
                       # a seeded run must replay the same challenges: the pool's filler draws fresh randomness
                       "cache": args.seed is None, "cache_items": 16, "cache_mb": 32,
                       **({"fake": args.fake} if args.fake else {})}})
        chain = Chain(connect(f"devnet:{db}"), NETUID, hotkey=vali.hotkey)
        validator = build_validator(cfg, vali.hotkey, chain)
        names = {m.uid: m.name for m in miners}
        print(f"validator: {args.rounds} challenges, one every {args.interval:g} s", flush=True)

        reports = []

        def on_round(report):
            reports.append(report)
            print(progress_line(report, names, args.rounds), flush=True)

        asyncio.run(run_validator(validator, args.rounds, on_round, args.dashboard))
        final = set_final_weights(validator, reports[-1] if reports else None)
        on_chain = chain.weights().get(vali_uid, {})
        rows = leaderboard(validator, miners, on_chain)
        print_leaderboard(rows)
        per_family = family_accuracy(reports, miners)
        print_family_table(per_family)
        result = {"rounds": validator.state.step, "miners": rows, "per_family": per_family, "validator_uid": vali_uid,
                  "weights_block": final.block if final and final.set else validator.state.last_weights_block,
                  "devnet": str(db), "dir": None if temporary else str(root),
                  "seconds": round(time.monotonic() - started, 1)}
        print(f"\nweights on chain from block {result['weights_block']}; {result['seconds']:.0f} s in all")
        if not temporary:
            print(f"dashboard of this run: bitmind-lite dashboard --dir {root / 'validator'}")
        finished = True
        return result
    finally:
        if validator is not None:
            validator.close()  # also stops the challenge pool's filler process
        # a second Ctrl-C must not leave miners behind: cleanup is bounded (GRACE_S), so it runs to the end
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop_processes([m.proc for m in miners])
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if temporary and finished:
            shutil.rmtree(root, ignore_errors=True)
        elif temporary:
            print(f"localnet: logs and state kept in {root}", file=sys.stderr)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bitmind-lite localnet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--miners", type=int, default=3, help="number of miners (first: NPR; others: npr_raw, random)")
    parser.add_argument("--rounds", type=int, default=30, help="challenges the validator sends")
    parser.add_argument("--dir", default=None, help="keep the devnet, wallets, logs and state here (default: temporary)")
    parser.add_argument("--json", default=None, help="also write the leaderboard to this JSON file")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between challenges")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds")
    parser.add_argument("--alpha", type=float, default=0.1, help="EMA weight of a new reward (subnet default 0.05)")
    parser.add_argument("--seed", type=int, default=None, help="seed for challenges and sampling")
    parser.add_argument("--fake", default=None, help="generator family mix for the fakes (default: the validator's, "
                                                     "offline); see `bitmind-lite data families`")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds the miners get to become healthy")
    parser.add_argument("--log-level", default="WARNING", help="validator log level (miners log to files)")
    parser.add_argument("--dashboard", default="127.0.0.1:0", help="HOST:PORT of the validator's dashboard while "
                                                                   "the localnet runs (port 0: a free one); off: none")
    args = parser.parse_args(argv)
    if args.miners < 1 or args.rounds < 1:
        parser.error("--miners and --rounds must be at least 1")
    if args.dashboard == "off":
        args.dashboard = None
    else:
        from bitmind_lite.validator.dashboard import parse_address

        try:
            args.dashboard = parse_address(args.dashboard, "--dashboard")
        except ValueError as e:
            parser.error(str(e))
    signal.signal(signal.SIGTERM, _interrupt)  # a supervisor's SIGTERM cleans up like Ctrl-C does
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("localnet: interrupted; all processes stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"localnet: {e}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"leaderboard written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
