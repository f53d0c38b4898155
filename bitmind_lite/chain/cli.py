"""`bitmind-lite devnet init|register|show|set`: create and administer an embedded devnet file.

    bitmind-lite devnet init /tmp/dev.db --netuid 1 --tempo 100 --weights-rate-limit 10
    bitmind-lite devnet register /tmp/dev.db --hotkey 5F... --stake 1000 --validator-permit
    bitmind-lite devnet register /tmp/dev.db --wallet miner1/default --wallet-path ~/.bittensor/wallets
    bitmind-lite devnet show /tmp/dev.db [--json]
    bitmind-lite devnet set /tmp/dev.db --offline 5 | --online | --advance 100 | --weights-rate-limit 3 ...
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from bitmind_lite.chain.devnet import TUNABLE, Devnet
from bitmind_lite.chain.devnet_db import U16_MAX, DevnetError, DevnetOffline, Params
from bitmind_lite.chain.wallets import WalletError, load_wallet

HYPERPARAMS = {  # flag -> (type, help); the same names as Devnet.create / set_hyperparameters
    "tempo": (int, "blocks per epoch"),
    "block_time": (float, "seconds per block"),
    "weights_rate_limit": (int, "blocks a validator waits between weight sets"),
    "min_allowed_weights": (int, "fewest non-zero weights a validator may set"),
    "max_weight_limit": (int, "largest share of a weight row, in 65535ths"),
    "reveal_period": (int, "epochs until a timelocked commit would reveal"),
    "serving_rate_limit": (int, "blocks between ServeAxon calls of one hotkey (0 = unlimited)"),
    "version_key": (int, "lowest weights version key the subnet accepts"),
    "max_uids": (int, "most neurons the subnet holds"),
}
assert set(HYPERPARAMS) | {"commit_reveal"} == set(TUNABLE)


def _add_hyperparams(p: argparse.ArgumentParser, with_defaults: bool) -> None:
    defaults = Params(netuid=0)
    for name, (type_, help_) in HYPERPARAMS.items():
        default = getattr(defaults, name) if with_defaults else None
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=type_, default=default,
                       help=help_ + (f" (default {default})" if with_defaults else ""))
    p.add_argument("--commit-reveal", dest="commit_reveal", action=argparse.BooleanOptionalAction,
                   default=False if with_defaults else None, help="timelocked commit-reveal weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bitmind-lite devnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="create a new devnet file (never overwrites one)")
    init.add_argument("path")
    init.add_argument("--netuid", type=int, required=True)
    _add_hyperparams(init, with_defaults=True)

    reg = sub.add_parser("register", help="register a hotkey on the devnet's subnet")
    reg.add_argument("path")
    who = reg.add_mutually_exclusive_group(required=True)
    who.add_argument("--hotkey", help="hotkey ss58 address")
    who.add_argument("--wallet", help="NAME[/HOTKEY]: read the hotkey (and coldkey) address from a wallet")
    reg.add_argument("--wallet-path", default="~/.bittensor/wallets")
    reg.add_argument("--coldkey", help="coldkey ss58 address (default: the wallet's, else the hotkey)")
    reg.add_argument("--stake", type=float, default=0.0, help="stake in subnet alpha")
    reg.add_argument("--validator-permit", action="store_true")
    reg.add_argument("--replace-uid", type=int, default=None, help="give this uid to the new hotkey")

    show = sub.add_parser("show", help="neurons, endpoints, stake and the latest weights")
    show.add_argument("path")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("--extrinsics", type=int, default=5, help="how many recent extrinsics to list")

    set_ = sub.add_parser("set", help="change hyperparameters, take the devnet offline/online, or advance the clock")
    set_.add_argument("path")
    _add_hyperparams(set_, with_defaults=False)
    state = set_.add_mutually_exclusive_group()
    state.add_argument("--offline", nargs="?", type=float, const=0.0, metavar="SECONDS",
                       help="make every chain call fail (for SECONDS, or until --online)")
    state.add_argument("--online", action="store_true")
    set_.add_argument("--advance", type=int, default=0, metavar="BLOCKS", help="jump the clock forward")
    return parser


def _short(ss58: str) -> str:
    return f"{ss58[:8]}…{ss58[-6:]}" if len(ss58) > 16 else ss58


def render(devnet: Devnet, extrinsics: int = 5) -> str:
    """The `show` table: subnet settings, one row per neuron, the latest weight rows, recent extrinsics."""
    p, now = devnet.params, time.time()
    state = "ONLINE" if not p.offline(now) else (
        "OFFLINE (until told)" if p.offline_until == float("inf") else f"OFFLINE ({p.offline_until - now:.0f}s more)")
    lines = [f"devnet {devnet.path}   netuid {p.netuid}   block {p.block_at(now)} ({p.block_time:g} s/block)   {state}",
             f"tempo {p.tempo}   weights_rate_limit {p.weights_rate_limit}   min_allowed_weights "
             f"{p.min_allowed_weights}   max_weight_limit {p.max_weight_limit / U16_MAX:.0%}   commit_reveal "
             f"{'on' if p.commit_reveal else 'off'}   version_key {p.version_key}   serving_rate_limit "
             f"{p.serving_rate_limit}", ""]
    neurons = devnet.neurons()
    head = f"{'uid':>4}  {'hotkey':<15}  {'stake':>12}  {'vpermit':<7}  {'endpoint':<21}  {'reg@':>6}  " \
           f"{'updated@':>8}  {'incentive':>9}"
    lines += [head, "-" * len(head)]
    for n in neurons:
        lines.append(f"{n['uid']:>4}  {_short(n['hotkey']):<15}  {n['stake']:>12,.3f}  {'yes' if n['validator_permit'] else '-':<7}  "
                     f"{n['endpoint'] or '-':<21}  {n['registered_at']:>6}  {n['last_update'] or '-':>8}  "
                     f"{n['incentive']:>9.3f}")
    if not neurons:
        lines.append("  (no neurons; add one with `bitmind-lite devnet register`)")
    weights = devnet.weights()
    lines += ["", "latest weights (validator uid -> miner uid: share of its row)"]
    for uid, row in weights.items():
        lines.append(f"  {uid:>4} -> " + "  ".join(f"{d}: {w:.3f}" for d, w in sorted(row.items())))
    if not weights:
        lines.append("  (none yet)")
    recent = devnet.extrinsics(extrinsics) if extrinsics > 0 else []
    if recent:
        lines += ["", "recent extrinsics (newest first)"]
        for x in recent:
            _module, function, _args = json.loads(x["call"])
            outcome = "ok" if x["ok"] else x["error"]
            lines.append(f"  block {x['block']:>6}  {_short(x['signer']):<15}  {function:<36}  {outcome}")
    return "\n".join(lines)


def _hotkey_and_coldkey(args) -> tuple[str, str | None]:
    if args.hotkey:
        return args.hotkey, args.coldkey
    name, _, hotkey = args.wallet.partition("/")
    wallet = load_wallet(name, hotkey or "default", args.wallet_path)
    coldkey = args.coldkey
    if coldkey is None:
        try:
            coldkey = wallet.coldkeypub.ss58_address
        except Exception:  # a hotkey-only wallet: register with the hotkey as coldkey
            coldkey = None
    return wallet.hotkey.ss58_address, coldkey


def run(args) -> int:
    if args.action == "init":
        values = {k: getattr(args, k) for k in (*HYPERPARAMS, "commit_reveal")}
        devnet = Devnet.create(args.path, netuid=args.netuid, **values)
        print(f"created devnet {devnet.path} (netuid {args.netuid}, block {devnet.block})")
        return 0
    devnet = Devnet(args.path)
    if args.action == "register":
        hotkey, coldkey = _hotkey_and_coldkey(args)
        uid = devnet.register(hotkey, stake=args.stake, validator_permit=args.validator_permit, coldkey_ss58=coldkey,
                              replace_uid=args.replace_uid)
        print(f"registered {hotkey} as uid {uid} on netuid {devnet.netuid}")
    elif args.action == "show":
        if args.json:
            print(json.dumps({"params": asdict(devnet.params), "block": devnet.block, "neurons": devnet.neurons(),
                              "weights": devnet.weights(), "extrinsics": devnet.extrinsics(args.extrinsics)},
                             indent=2, default=str))
        else:
            print(render(devnet, args.extrinsics))
    elif args.action == "set":
        changes = {k: getattr(args, k) for k in TUNABLE if getattr(args, k) is not None}
        if changes:
            devnet.set_hyperparameters(**changes)
        if args.offline is not None:
            devnet.set_available(False, for_seconds=args.offline or None)
        if args.online:
            devnet.set_available(True)
        if args.advance:
            devnet.advance(args.advance)
        print(render(devnet, extrinsics=0))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (DevnetError, DevnetOffline, WalletError) as e:
        print(f"bitmind-lite devnet: {e}", file=sys.stderr)
        return 1
