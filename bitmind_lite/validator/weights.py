"""Turning scores into weights on chain, once per epoch, through the chain layer (the same SDK calls everywhere).

Negative and non-finite scores count as 0, the rest are normalised to sum to 1. When every score is 0 no weights
are set (setting all-zero weights would say nothing and burn a rate-limit slot) and the log says why. A
rate-limited or failed call is retried at the block the chain names, or at the next challenge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

from loguru import logger

from bitmind_lite.validator.scores import finite_or_zero


def normalize_scores(scores: Mapping[int, float]) -> dict[int, float]:
    """{uid: weight} with weights >= 0 summing to 1; {} when no score is positive."""
    clipped = {uid: max(0.0, finite_or_zero(s)) for uid, s in scores.items()}
    total = sum(clipped.values())
    if total <= 0.0:
        return {}
    return {uid: s / total for uid, s in clipped.items() if s > 0.0}


@dataclass(frozen=True)
class WeightsOutcome:
    block: int
    set: bool
    reason: str  # "set", "all-zero", or the chain's error code
    weights: dict[int, float]


class WeightSetter:
    """Decides when weights are due and sets them; remembers when to retry after a refusal."""

    def __init__(self, chain, epoch_length: int, version_key: int):
        self.chain, self.epoch_length, self.version_key = chain, epoch_length, version_key
        self.retry_at: Optional[int] = None  # a block before which retrying is pointless
        self._last_reason: Optional[str] = None

    def due(self, block: int, last_weights_block: Optional[int]) -> bool:
        if self.retry_at is not None and block < self.retry_at:
            return False
        return last_weights_block is None or block - last_weights_block >= self.epoch_length

    def set_weights(self, block: int, scores: Mapping[int, float]) -> WeightsOutcome:
        """One attempt. ChainUnavailable propagates: the caller keeps scoring and tries again later."""
        weights = normalize_scores(scores)
        if not weights:
            self._say("all-zero", "not setting weights: every miner's score is 0 (no miner has earned a reward yet "
                                  "or all of them answer invalidly); checking again at the next challenge")
            return WeightsOutcome(block, False, "all-zero", {})
        result = self.chain.set_weights(weights, version_key=self.version_key)
        if result.ok:
            self.retry_at = None
            self._last_reason = None
            top = sorted(weights.items(), key=lambda kv: -kv[1])[:5]
            logger.success(f"weights set at block {block} for {len(weights)} uids (top: "
                           + ", ".join(f"{u}={w:.3f}" for u, w in top) + ")")
            return WeightsOutcome(block, True, "set", weights)
        wait = result.retry_in_blocks if result.retry_in_blocks else 1
        self.retry_at = block + wait
        self._say(result.code or "failed", f"set_weights refused at block {block}: {result.code}: {result.message}; "
                                           f"retrying at block {self.retry_at}")
        return WeightsOutcome(block, False, result.code or "failed", weights)

    def _say(self, reason: str, message: str) -> None:
        """Log a reason once (all-zero at INFO: normal at start-up; refusals at WARNING), then at DEBUG."""
        first = logger.info if reason == "all-zero" else logger.warning
        (first if reason != self._last_reason else logger.debug)(message)
        self._last_reason = reason
