"""Wallets: load a node's keys, and create unencrypted ones for devnets and tests (`bitmind-lite wallet create`).

Real users keep using `btcli`; the on-disk layout is bittensor's own (<path>/<name>/coldkey, hotkeys/<hotkey>), so
either tool reads what the other wrote. Nodes only need the hotkey.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import bittensor as bt

DEFAULT_PATH = "~/.bittensor/wallets"


class WalletError(Exception):
    """A wallet cannot be loaded or created; the message says which file and what to do."""


def _wallet(name: str, hotkey: str, path: str) -> bt.Wallet:
    return bt.Wallet(name=name, hotkey=hotkey, path=str(Path(path).expanduser()))


def load_wallet(name: str, hotkey: str, path: str = DEFAULT_PATH) -> bt.Wallet:
    """The wallet with its hotkey already loaded (so `wallet.hotkey` is the cached Keypair)."""
    wallet = _wallet(name, hotkey, path)
    hotkey_file = Path(wallet.path) / name / "hotkeys" / hotkey
    if not hotkey_file.is_file():
        raise WalletError(f"hotkey file {hotkey_file} not found (wallet {name!r}, hotkey {hotkey!r}); create it with "
                          f"`btcli` or, for a devnet, `bitmind-lite wallet create --name {name} --hotkey {hotkey} "
                          f"--path {path}`")
    try:
        wallet.hotkey  # noqa: B018 - read and cache the keypair now, so a bad file fails at start-up
    except Exception as e:
        raise WalletError(f"cannot read hotkey file {hotkey_file}: {e}") from None
    return wallet


def create_wallet(name: str, hotkey: str, path: str = DEFAULT_PATH, overwrite: bool = False) -> bt.Wallet:
    """Create (or reuse) an unencrypted coldkey and create a hotkey, with no prompt. For devnets and tests only."""
    wallet = _wallet(name, hotkey, path)
    root = Path(wallet.path) / name
    hotkey_file = root / "hotkeys" / hotkey
    if hotkey_file.exists() and not overwrite:
        raise WalletError(f"{hotkey_file} already exists (pass overwrite=True / --overwrite to replace it)")
    if not (root / "coldkeypub.txt").is_file() or overwrite:
        wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return load_wallet(name, hotkey, path)


def main(argv: list[str] | None = None) -> int:
    """`bitmind-lite wallet create|show`."""
    parser = argparse.ArgumentParser(prog="bitmind-lite wallet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action, help_ in (("create", "create keys with no password prompt (devnets and tests only)"),
                          ("show", "print a wallet's coldkey and hotkey addresses")):
        p = sub.add_parser(action, help=help_)
        p.add_argument("--name", required=True, help="wallet (coldkey) name")
        p.add_argument("--hotkey", default="default", help="hotkey name")
        p.add_argument("--path", default=DEFAULT_PATH, help="wallets folder")
        if action == "create":
            p.add_argument("--overwrite", action="store_true", help="replace existing keys")
    args = parser.parse_args(argv)
    try:
        if args.action == "create":
            wallet = create_wallet(args.name, args.hotkey, args.path, overwrite=args.overwrite)
        else:
            wallet = load_wallet(args.name, args.hotkey, args.path)
        coldkey = wallet.coldkeypub.ss58_address
    except (WalletError, OSError) as e:
        print(f"bitmind-lite wallet: {e}", file=sys.stderr)
        return 1
    print(f"wallet   {args.name}/{args.hotkey}  ({Path(wallet.path) / args.name})")
    print(f"coldkey  {coldkey}")
    print(f"hotkey   {wallet.hotkey.ss58_address}")
    return 0
