"""Who may use the miner: metagraph membership, validator permit, minimum stake, per-caller rate limit.

The gate runs after authentication, so the hotkey it sees is proven, and a forged hotkey can neither pass nor spend
a real validator's rate budget. It only reads the last metagraph snapshot (the service refreshes it in the
background), so a request never waits for the chain.

`Rejection` is the miner's one refusal type, whoever refuses (gate, batcher, HTTP layer): an `ErrorKind` (which
carries the HTTP status), a message safe to show the caller, and an optional Retry-After. The app turns it into
`{"detail", "kind"}` in one exception handler.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional

from bitmind_lite.config import BlacklistConfig
from bitmind_lite.protocol import ErrorKind


class Rejection(Exception):
    """A request the miner refuses: `kind` says why (and so the HTTP status), `retry_after` (seconds) goes into
    Retry-After. Subclasses fix the kind for one cause (see batcher.py)."""

    kind: ErrorKind = ErrorKind.malformed

    def __init__(self, message: str, kind: Optional[ErrorKind] = None, retry_after: Optional[float] = None):
        super().__init__(message)
        self.message, self.retry_after = message, retry_after
        if kind is not None:
            self.kind = kind

    @property
    def status(self) -> int:
        return self.kind.status


class RateLimiter:
    """Token bucket per caller: `per_minute` requests of burst, refilled at `per_minute` per 60 s."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_callers: int = 10_000):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_callers = max_callers
        self.buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, time of last update)

    def acquire(self, caller: str) -> float:
        """Take one token. Returns 0 when allowed, else the seconds until a token is available."""
        now = self.clock()
        tokens, last = self.buckets.get(caller, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self.buckets[caller] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if caller not in self.buckets and len(self.buckets) >= self.max_callers:
            self._forget_idle(now)
        self.buckets[caller] = (tokens - 1.0, now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        """Drop callers whose bucket has refilled: forgetting them changes nothing, and it bounds memory."""
        full_after = self.capacity / self.rate
        self.buckets = {k: v for k, v in self.buckets.items() if now - v[1] < full_after}


class Gate:
    """Admits authenticated callers by the metagraph. `admit` returns the caller's stake (its weight in the fair
    queue)."""

    def __init__(self, cfg: BlacklistConfig, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self.limiter = RateLimiter(cfg.rate_limit, clock)
        self.snapshot = None  # MetagraphSnapshot | None until the first sync
        self._neurons: dict = {}  # hotkey -> NeuronInfo, rebuilt once per snapshot for O(1) requests

    def update(self, snapshot) -> None:
        """Swap in a new metagraph snapshot (one assignment each, so a request sees either the old or the new)."""
        self._neurons = {n.hotkey: n for n in snapshot.neurons}
        self.snapshot = snapshot

    def neuron(self, hotkey: str):
        return self._neurons.get(hotkey)

    def admit(self, hotkey: str) -> float:
        cfg = self.cfg
        if self.snapshot is None and not cfg.allow_non_registered:
            raise Rejection("the miner has not loaded the metagraph yet; retry shortly", ErrorKind.unavailable,
                            retry_after=5)
        # Membership first: unknown hotkeys are a normal answer here, never an exception from an index lookup.
        neuron = self._neurons.get(hotkey)
        if neuron is None:
            if not cfg.allow_non_registered:
                netuid = self.snapshot.netuid
                raise Rejection(f"hotkey {hotkey} is not registered on subnet {netuid}", ErrorKind.forbidden)
            stake = 0.0
        else:
            if cfg.force_validator_permit and not neuron.validator_permit:
                raise Rejection(f"hotkey {hotkey} (uid {neuron.uid}) has no validator permit", ErrorKind.forbidden)
            stake = float(neuron.stake)
            if stake < cfg.min_stake:
                raise Rejection(f"hotkey {hotkey} (uid {neuron.uid}) has stake {stake:g}, below the minimum "
                                f"{cfg.min_stake:g}", ErrorKind.forbidden)
        wait = self.limiter.acquire(hotkey)
        if wait > 0:
            raise Rejection(f"rate limit exceeded: at most {cfg.rate_limit} requests per minute per caller",
                            ErrorKind.rate_limited, retry_after=math.ceil(wait))
        return stake
