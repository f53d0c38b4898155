"""Chain layer: bittensor 11 on real networks, and an embedded devnet that runs the same SDK code.

`connect(network)` gives a `bittensor.Subtensor` (finney, test, local, ws(s)://URL, or devnet:PATH); `Chain` is the
small seam the nodes use; `Devnet` is the SQLite-backed substrate and its admin API; `load_wallet`/`create_wallet`
handle keys. See docs/chain.md.
"""
from bitmind_lite.chain.client import (ChainResult, Chain, ChainUnavailable, MetagraphSnapshot, NeuronInfo, connect,
                                       parse_endpoint)
from bitmind_lite.chain.devnet import Devnet, DevnetUnsupported
from bitmind_lite.chain.devnet_db import DevnetError, Params
from bitmind_lite.chain.wallets import WalletError, create_wallet, load_wallet

# The bittensor releases this layer was written and tested against (tests/test_chain.py checks the installed one).
BITTENSOR_RANGE = (">=11.3", "<12")

__all__ = ["BITTENSOR_RANGE", "Chain", "ChainResult", "ChainUnavailable", "Devnet", "DevnetError", "DevnetUnsupported",
           "MetagraphSnapshot", "NeuronInfo", "Params", "WalletError", "connect", "create_wallet", "load_wallet",
           "parse_endpoint"]
