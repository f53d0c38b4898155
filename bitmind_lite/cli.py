"""`bitmind-lite`: one command, subcommands loaded lazily (so `detect` never imports the chain, and vice versa).

Each subcommand is a module with `main(argv) -> int`; add one line to COMMANDS to add a subcommand.
"""
from __future__ import annotations

import importlib
import sys

from bitmind_lite import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "detect": ("bitmind_lite.detect", "score image files with a detector: P(AI-generated) and a verdict"),
    "data": ("bitmind_lite.data.cli", "challenge images and datasets: build an NPR training set, sample challenges"),
    "devnet": ("bitmind_lite.chain.cli", "embedded devnet (SQLite chain): init | register | show | set"),
    "wallet": ("bitmind_lite.chain.wallets", "create keys with no password prompt (devnets/tests) or show them"),
    "miner": ("bitmind_lite.miner.run", "run a miner: the detector behind a signed HTTP endpoint"),
    "validator": ("bitmind_lite.validator.run", "run a validator: challenge miners, score them, set weights"),
    "localnet": ("bitmind_lite.localnet", "a whole subnet on this machine: devnet, miners, a validator, a leaderboard"),
    "bench": ("bitmind_lite.benchmark", "what a detector or a live miner would earn from the validators' challenges"),
    "dashboard": ("bitmind_lite.validator.dashboard", "a read-only web page over a validator's state folder"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_mod, help_) in COMMANDS.items())
    return f"usage: bitmind-lite COMMAND [options]   (bitmind-lite COMMAND --help for its options)\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"bitmind-lite {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"bitmind-lite: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
