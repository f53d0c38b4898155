"""Miner entry point: `python neurons/miner.py --netuid 1 --wallet.name m1 ...` (all flags: --help).

Settings also come from the environment (NEURON_DEVICE=cuda) and from .env.miner (see .env.miner.example).
"""
import sys

from bitmind_lite.miner.run import main

if __name__ == "__main__":
    sys.exit(main())
