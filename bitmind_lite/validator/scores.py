"""Scores: an exponential moving average of rewards per uid, kept in step with the metagraph.

Only miners that were challenged move (towards their reward); a miner that is registered but no longer serves
moves towards 0 at the same rate, so a dead endpoint cannot keep its weight; uids that left the metagraph are
dropped; a uid whose hotkey changed (deregistered and taken by someone else) starts again from zero with an empty
history. NaN or infinite rewards are treated as 0 and never reach the scores.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from loguru import logger

from bitmind_lite.validator.state import MinerRecord, ValidatorState


def sync_with_metagraph(state: ValidatorState, hotkeys: Mapping[int, str]) -> list[str]:
    """Make `state.miners` match the metagraph's {uid: hotkey}; returns what changed, for the log."""
    events = []
    for uid in [u for u in state.miners if u not in hotkeys]:
        events.append(f"uid {uid} left the metagraph: score {state.miners.pop(uid).score:.4f} dropped")
    for uid, hotkey in hotkeys.items():
        record = state.miners.get(uid)
        if record is None:
            state.miners[uid] = MinerRecord(hotkey)
        elif record.hotkey != hotkey:
            events.append(f"uid {uid} changed hotkey {record.hotkey[:8]}… -> {hotkey[:8]}…: history and score reset")
            state.miners[uid] = MinerRecord(hotkey)
    for e in events:
        logger.info(e)
    return events


def finite_or_zero(x: float) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0


def update_scores(state: ValidatorState, rewards: Mapping[int, float], alpha: float,
                  idle: Iterable[int] = ()) -> None:
    """EMA step: score <- alpha * reward + (1 - alpha) * score for challenged uids, reward 0 for `idle` uids."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    targets = {uid: 0.0 for uid in idle}
    targets.update({uid: finite_or_zero(r) for uid, r in rewards.items()})
    for uid, target in targets.items():
        record = state.miners.get(uid)
        if record is None:  # not in the metagraph any more: nothing to score
            continue
        record.score = finite_or_zero(alpha * target + (1.0 - alpha) * finite_or_zero(record.score))
