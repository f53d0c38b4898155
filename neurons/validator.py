"""Validator entry point: `python neurons/validator.py --netuid 1 --wallet.name v1 ...` (all flags: --help).

Settings also come from the environment (NEURON_SAMPLE_SIZE=50) and from .env.validator (see .env.validator.example).
"""
import sys

from bitmind_lite.validator.run import main

if __name__ == "__main__":
    sys.exit(main())
