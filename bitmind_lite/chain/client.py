"""The nodes' view of the chain: connect to a network, then five things through one small class.

    chain = Chain(connect("devnet:/tmp/dev.db"), netuid=1, hotkey=wallet.hotkey)     # or Chain.from_config(cfg, hotkey)
    chain.block(); chain.metagraph(); chain.uid(ss58)
    chain.serve_axon("203.0.113.7", 8091)              # ChainResult; (ok, "unchanged") when already published
    chain.set_weights({0: 0.7, 1: 0.3}, version_key=1)  # ChainResult(ok=False, code="RATE_LIMITED", retry_in_blocks=42)

Every call goes through the real `bittensor.Subtensor` (finney, test, a local node, or the embedded devnet behind
the SDK's `substrate=` seam). Chain refusals come back as `ChainResult` values; an unreachable chain raises
`ChainUnavailable` after a couple of quick retries, so a node can keep serving and try again later.
"""
from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, TypeVar

import bittensor as bt
from bittensor.result import ConnectionNotReady
from websockets.exceptions import WebSocketException

from bitmind_lite.chain.devnet import Devnet

T = TypeVar("T")
DEVNET_PREFIX = "devnet:"
UNREACHABLE = (bt.RpcConnectionError, ConnectionNotReady, ConnectionError, TimeoutError, OSError, WebSocketException)


class ChainUnavailable(Exception):
    """The chain could not be reached (node down, network error, devnet offline). Try again later."""


@dataclass(frozen=True)
class NeuronInfo:
    uid: int
    hotkey: str
    stake: float                               # subnet alpha
    validator_permit: bool
    endpoint: Optional[tuple[str, int]]        # (ip, port), None when not serving
    coldkey: str = ""                          # additions beyond the contract: handy for logs and `devnet show`
    last_update: int = 0
    incentive: float = 0.0


@dataclass(frozen=True)
class MetagraphSnapshot:
    netuid: int
    block: int
    neurons: list[NeuronInfo]
    _by_hotkey: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_by_hotkey", {n.hotkey: n for n in self.neurons})

    def by_hotkey(self, ss58: str) -> Optional[NeuronInfo]:
        return self._by_hotkey.get(ss58)

    def by_uid(self, uid: int) -> Optional[NeuronInfo]:
        return self.neurons[uid] if 0 <= uid < len(self.neurons) and self.neurons[uid].uid == uid else None

    @property
    def hotkeys(self) -> list[str]:
        return [n.hotkey for n in self.neurons]

    def __len__(self) -> int:
        return len(self.neurons)

    def __iter__(self) -> Iterator[NeuronInfo]:
        return iter(self.neurons)


@dataclass(frozen=True)
class ChainResult:
    ok: bool
    code: Optional[str]                        # bittensor ErrorCode name, e.g. "RATE_LIMITED"; None when ok
    message: str
    retry_in_blocks: Optional[int] = None


def connect(network: str) -> bt.Subtensor:
    """finney | test | local | archive | ws(s)://URL -> bittensor.Subtensor(network);
    devnet:PATH -> bittensor.Subtensor("local", substrate=Devnet(PATH)) (PATH must be an existing devnet)."""
    if network.startswith(DEVNET_PREFIX):
        path = network[len(DEVNET_PREFIX):]
        if not path:
            raise ValueError("devnet:PATH needs a path, e.g. devnet:/tmp/bitmind-devnet.db")
        return bt.Subtensor("local", substrate=Devnet(path))
    try:
        return bt.Subtensor(network)
    except ValueError as e:
        raise ValueError(f"{e} For the embedded devnet use devnet:PATH.") from None


def parse_endpoint(axon: Optional[str]) -> Optional[tuple[str, int]]:
    """The SDK's "ip:port" / "[v6]:port" -> (ip, port)."""
    if not axon:
        return None
    host, _, port = axon.rpartition(":")
    return host.strip("[]"), int(port)


def _same_endpoint(a: Optional[tuple[str, int]], ip: str, port: int) -> bool:
    try:
        return a is not None and a[1] == port and ipaddress.ip_address(a[0]) == ipaddress.ip_address(ip)
    except ValueError:
        return False


def _failure(error: Exception) -> ChainResult:
    """A refusal as a value: ChainError keeps its ErrorCode; other SDK argument errors are INVALID_ARGUMENT."""
    if not isinstance(error, bt.ChainError):
        return ChainResult(ok=False, code="INVALID_ARGUMENT", message=str(error))
    name = getattr(error, "name", None)
    return ChainResult(ok=False, code=error.code.name, message=f"{name}: {error}" if name else str(error))


class Chain:
    """Block, metagraph, uid look-ups, endpoint publishing and weight setting for one subnet."""

    def __init__(self, subtensor: bt.Subtensor, netuid: int, hotkey: Any = None, *, retries: int = 2,
                 backoff: float = 0.25):
        self.subtensor = subtensor
        self.netuid = int(netuid)
        # Writes are signed by the cached hotkey Keypair; a whole Wallet is accepted and reduced to its hotkey.
        self.hotkey = hotkey.hotkey if hotkey is not None and not hasattr(hotkey, "sign") else hotkey
        self.retries = retries
        self.backoff = backoff

    @classmethod
    def from_config(cls, cfg, hotkey: Any = None) -> "Chain":
        return cls(connect(cfg.subtensor.network), cfg.netuid, hotkey)

    @property
    def network(self) -> str:
        return self.subtensor.network

    def __repr__(self) -> str:
        return f"Chain(network={self.network!r}, netuid={self.netuid})"

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call; connection failures are retried briefly with backoff, then raise ChainUnavailable."""
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except UNREACHABLE as e:
                error = e
                if attempt < self.retries:
                    time.sleep(delay)
                    delay *= 2
        raise ChainUnavailable(f"{what}: chain {self.network!r} unreachable after {self.retries + 1} attempts: "
                               f"{error}") from error

    # ---- reads ----
    def block(self) -> int:
        return int(self._call("block", lambda: self.subtensor.block))

    def metagraph(self) -> MetagraphSnapshot:
        mg = self._call("metagraph", lambda: self.subtensor.subnets.metagraph(self.netuid, commitments=False))
        if mg is None:
            raise bt.ChainError(f"subnet {self.netuid} does not exist on {self.network!r}",
                                code=bt.ErrorCode.SUBNET_NOT_EXISTS)
        neurons = [NeuronInfo(uid=n.uid, hotkey=n.hotkey, stake=n.total_stake.rao / 1e9,
                              validator_permit=bool(n.validator_permit), endpoint=parse_endpoint(n.axon),
                              coldkey=n.coldkey, last_update=n.last_update, incentive=n.incentive)
                   for n in mg.neurons]
        return MetagraphSnapshot(netuid=self.netuid, block=mg.block, neurons=neurons)

    def uid(self, hotkey_ss58: str) -> Optional[int]:
        return self._call("uid", lambda: self.subtensor.neurons.uid(hotkey_ss58, self.netuid))

    def weights(self) -> dict[int, dict[int, float]]:
        """{validator_uid: {miner_uid: fraction}} as currently on chain (an addition beyond the contract)."""
        return self._call("weights", lambda: self.subtensor.weights.weights(self.netuid))

    # ---- writes ----
    def _signer(self) -> Any:
        if self.hotkey is None:
            raise ValueError("this Chain has no hotkey; pass hotkey=wallet.hotkey to sign extrinsics")
        return self.hotkey

    def _execute(self, what: str, intent) -> ChainResult:
        signer = self._signer()
        try:
            result = self._call(what, lambda: self.subtensor.execute(intent, signer, wait_for_finalization=False))
        except bt.BittensorError as e:  # preflight refusals (RATE_LIMITED, NOT_REGISTERED, ...) and bad arguments
            return _failure(e)
        if result.success:
            return ChainResult(ok=True, code=None, message=result.message or f"{what} included")
        return _failure(result.error or bt.ChainError(result.message or f"{what} failed"))

    def serve_axon(self, ip: str, port: int) -> ChainResult:
        """Publish this hotkey's endpoint; a no-op (ok, "unchanged") when the chain already shows it."""
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return ChainResult(ok=False, code="INVALID_ARGUMENT", message=f"{ip!r} is not an IP address")
        me = self.metagraph().by_hotkey(self._signer().ss58_address)
        if me is None:
            return ChainResult(ok=False, code="NOT_REGISTERED",
                               message=f"hotkey {self._signer().ss58_address} is not registered on netuid {self.netuid}")
        if _same_endpoint(me.endpoint, ip, port):
            return ChainResult(ok=True, code=None, message="unchanged")
        return self._execute("serve_axon", bt.ServeAxon(netuid=self.netuid, ip=ip, port=int(port)))

    def set_weights(self, weights: dict[int, float], version_key: int) -> ChainResult:
        """Set weights ({uid: weight}, relative); the SDK clips, quantizes and picks plain or commit-reveal."""
        if not weights:
            return ChainResult(ok=False, code="INVALID_ARGUMENT", message="no weights to set")
        try:
            intent = bt.SetWeights(netuid=self.netuid, weights={int(u): float(w) for u, w in weights.items()},
                                   version_key=int(version_key))
        except (bt.BittensorError, TypeError, ValueError) as e:
            return ChainResult(ok=False, code="INVALID_ARGUMENT", message=str(e))
        result = self._execute("set_weights", intent)
        if result.code == "RATE_LIMITED":
            return ChainResult(ok=False, code=result.code, message=result.message,
                               retry_in_blocks=self._retry_in_blocks(result.message))
        return result

    def _retry_in_blocks(self, message: str) -> Optional[int]:
        """From the SDK's preflight message ("Retry in ~N blocks"), else from WeightsSetRateLimit and LastUpdate."""
        found = re.search(r"retry in ~?(\d+) blocks", message, re.IGNORECASE)
        if found:
            return int(found.group(1))
        try:
            uid = self.uid(self._signer().ss58_address)
            limit = int(self._call("rate limit", lambda: self.subtensor.query(
                bt.storage.SubtensorModule.WeightsSetRateLimit, [self.netuid])) or 0)
            last = self._call("last update", lambda: self.subtensor.query(
                bt.storage.SubtensorModule.LastUpdate, [self.netuid])) or []
            if uid is None or uid >= len(last):
                return None
            return max(1, limit - (self.block() - int(last[uid])))
        except ChainUnavailable:
            return None

    def close(self) -> None:
        try:
            self.subtensor.close()
        except Exception:  # closing must never take a node down (e.g. an instance used in async mode)
            pass
