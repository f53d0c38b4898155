"""How one miner's recent answers become a reward in [-0.5, 1] (formulas and reasons in docs/incentive.md).

    base        = 0.5 * MCC(last 100 valid) + 0.5 * accuracy(last 10 valid)
    reliability = 1 - invalid / answers                 (over the last 100 answers, invalid ones included)
    calibration = clip(1 - 2 * Brier(last 100 valid), 0, 1)
    reward      = base * reliability * calibration      (0 before MIN_VALID valid answers, 0 for an invalid answer)

A prediction p > 0.5 means "AI-generated" (label 1); p = 0.5 counts as "real", as in the reference subnet.
"""
from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
from sklearn.metrics import brier_score_loss, matthews_corrcoef

from bitmind_lite.protocol import is_valid_prediction

WINDOW = 100  # answers kept per miner (valid and invalid)
SHORT_WINDOW = 10  # the accuracy term looks only at the most recent valid answers, so a fix shows up fast
MIN_VALID = 5  # no reward before this many valid answers: a lucky first guess is not a track record


class History:
    """The last WINDOW (prediction, label) pairs of one miner; prediction None = invalid answer."""

    def __init__(self, answers: Iterable[tuple[Optional[float], int]] = ()):
        self.answers: deque[tuple[Optional[float], int]] = deque(maxlen=WINDOW)
        for p, label in answers:
            self.record(p, label)

    def record(self, prediction: Optional[float], label: int) -> None:
        if label not in (0, 1):
            raise ValueError(f"label must be 0 or 1, got {label!r}")
        self.answers.append((float(prediction) if is_valid_prediction(prediction) else None, int(label)))

    def valid(self) -> list[tuple[float, int]]:
        return [(p, label) for p, label in self.answers if p is not None]

    def __len__(self) -> int:
        return len(self.answers)

    def to_list(self) -> list[list]:
        return [[p, label] for p, label in self.answers]

    @classmethod
    def from_list(cls, items: list) -> "History":
        return cls((p, label) for p, label in items)


@dataclass(frozen=True)
class MinerMetrics:
    answers: int
    valid: int
    accuracy: float  # over the last SHORT_WINDOW valid answers
    mcc: float  # over the last WINDOW valid answers
    brier: float
    reward: float

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def metrics(history: History, min_valid: int = MIN_VALID) -> MinerMetrics:
    """All the numbers behind the reward, for logs and the leaderboard."""
    valid = history.valid()
    n, n_valid = len(history), len(valid)
    if n_valid == 0:
        return MinerMetrics(n, 0, 0.0, 0.0, 1.0, 0.0)
    probs = np.array([p for p, _ in valid])
    labels = np.array([label for _, label in valid])
    calls = (probs > 0.5).astype(int)
    with warnings.catch_warnings():  # one-class windows: MCC is defined as 0 there, sklearn warns about it
        warnings.simplefilter("ignore")
        mcc = float(matthews_corrcoef(labels, calls))
        brier = float(brier_score_loss(labels, probs, labels=[0, 1]))
    accuracy = float(np.mean(calls[-SHORT_WINDOW:] == labels[-SHORT_WINDOW:]))
    if n_valid < min_valid:
        return MinerMetrics(n, n_valid, accuracy, mcc, brier, 0.0)
    base = 0.5 * mcc + 0.5 * accuracy
    reliability = n_valid / n
    calibration = min(1.0, max(0.0, 1.0 - 2.0 * brier))
    reward = base * reliability * calibration
    return MinerMetrics(n, n_valid, accuracy, mcc, brier, reward if math.isfinite(reward) else 0.0)


def reward(history: History, min_valid: int = MIN_VALID) -> float:
    return metrics(history, min_valid).reward


def challenge_reward(history: History, prediction: Optional[float], label: int,
                     min_valid: int = MIN_VALID) -> tuple[float, MinerMetrics]:
    """Record one answer and return this challenge's reward: 0 for an invalid answer, else the windowed reward."""
    history.record(prediction, label)
    m = metrics(history, min_valid)
    return (m.reward if is_valid_prediction(prediction) else 0.0), m
