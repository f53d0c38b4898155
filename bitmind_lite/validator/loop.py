"""The challenge loop: sample miners -> challenge -> query -> reward -> scores -> (weights) -> persist -> record.

One `Validator.challenge()` is one round; `Validator.run()` repeats it every --neuron.challenge_interval seconds.
`set_weights_now()` and `close()` are for callers that drive a validator themselves (localnet).
The chain is needed for the metagraph and for weights only: while it is unreachable the loop keeps challenging the
miners it last saw and sets weights once the chain is back.
"""
from __future__ import annotations

import asyncio
import base64
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
from loguru import logger

from bitmind_lite import SPEC_VERSION
from bitmind_lite.chain import ChainUnavailable
from bitmind_lite.protocol import encode_image
from bitmind_lite.validator.query import Answer, MinerClient, Target, challenge_body
from bitmind_lite.validator.reward import MinerMetrics, challenge_reward
from bitmind_lite.validator.scores import sync_with_metagraph, update_scores
from bitmind_lite.validator.state import StateStore
from bitmind_lite.validator.telemetry import ChallengeLog, ValidatorMetrics, WandbRun
from bitmind_lite.validator.weights import WeightSetter, WeightsOutcome


@dataclass
class RoundReport:
    """What one challenge did, for progress displays and tests."""

    step: int
    label: Optional[int] = None
    meta: dict = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    rewards: dict[int, float] = field(default_factory=dict)
    metrics: dict[int, MinerMetrics] = field(default_factory=dict)
    weights: Optional[WeightsOutcome] = None
    chain_up: bool = True
    skipped: Optional[str] = None  # why no challenge was sent
    seconds: float = 0.0


def select_targets(snapshot, own_hotkey: str, sample_size: int, vpermit_stake_limit: float,
                   rng: np.random.Generator) -> tuple[list[Target], set[int]]:
    """(up to sample_size random serving miners, uids that cannot be challenged).

    A neuron is challengeable when it publishes an endpoint, is not us, and is not a validator (permit and stake
    above the limit: small subnets hand permits to miners too, so a permit alone does not make a validator)."""
    eligible, idle = [], set()
    for n in snapshot.neurons:
        is_validator = n.validator_permit and n.stake > vpermit_stake_limit
        if n.endpoint is None or n.hotkey == own_hotkey or is_validator:
            idle.add(n.uid)
        else:
            eligible.append(Target(n.uid, n.hotkey, n.endpoint[0], n.endpoint[1]))
    if len(eligible) > sample_size:
        picked = rng.choice(len(eligible), size=sample_size, replace=False)
        eligible = [eligible[i] for i in sorted(picked)]
    return eligible, idle


def attribution_record(answer: Answer) -> dict:
    """{"attribution": {"label", "probs"}} for an answer that named a generator, else {} (most miners name none, and
    the log stays as it was for them). Recorded for analysis; not scored (docs/incentive.md, "Attribution")."""
    guess = getattr(answer, "attribution", None)  # an Answer from before query.py carried the attribution has none
    return {} if guess is None else {"attribution": guess.model_dump()}


class Validator:
    def __init__(self, cfg, chain, keypair, sampler, store: StateStore, log: Optional[ChallengeLog] = None,
                 wandb: Optional[WandbRun] = None, metrics: Optional[ValidatorMetrics] = None,
                 rng: Optional[np.random.Generator] = None):
        self.cfg, self.n = cfg, cfg.neuron
        self.chain, self.hotkey, self.sampler = chain, keypair.ss58_address, sampler
        self.store, self.log, self.wandb = store, log, wandb
        self.metrics = metrics or ValidatorMetrics()
        self.rng = rng or np.random.default_rng(self.n.seed)
        self.state = store.load()
        self.client = MinerClient(keypair, self.n.timeout)
        self.weight_setter = WeightSetter(chain, self.n.epoch_length, SPEC_VERSION)
        self.snapshot = None
        self._synced_at = -math.inf

    # ---- chain ----
    async def sync(self, force: bool = False) -> bool:
        """Refresh the metagraph when due. False when the chain is unreachable (the last snapshot stays in use)."""
        if not force and self.snapshot is not None and time.monotonic() - self._synced_at < self.n.sync_interval:
            return True
        try:
            snapshot = await asyncio.to_thread(self.chain.metagraph)
        except ChainUnavailable as e:
            logger.warning(f"metagraph refresh failed, using the last one ({'none yet' if self.snapshot is None else f'block {self.snapshot.block}'}): {e}")
            return False
        self.snapshot, self._synced_at = snapshot, time.monotonic()
        sync_with_metagraph(self.state, {n.uid: n.hotkey for n in snapshot.neurons})
        return True

    async def maybe_set_weights(self) -> tuple[Optional[WeightsOutcome], bool]:
        try:
            block = await asyncio.to_thread(self.chain.block)
            if not self.weight_setter.due(block, self.state.last_weights_block):
                return None, True
            outcome = await asyncio.to_thread(self._set_weights, block)
        except ChainUnavailable as e:
            logger.warning(f"chain unavailable, weights wait until it is back: {e}")
            return None, False
        return outcome, True

    def set_weights_now(self) -> WeightsOutcome:
        """Set weights from the current scores at the current block, epoch or not, forgetting any retry back-off,
        and save the state (blocking). The chain's own rate limit still applies: the outcome then says so."""
        self.weight_setter.retry_at = None
        outcome = self._set_weights(self.chain.block())
        if outcome.set:
            self.store.save(self.state)
        return outcome

    def _set_weights(self, block: int) -> WeightsOutcome:
        outcome = self.weight_setter.set_weights(block, self.state.scores())
        if outcome.set:
            self.state.last_weights_block = outcome.block
        return outcome

    # ---- one round ----
    def _score(self, answers: list[Answer], label: int) -> tuple[dict[int, float], dict[int, MinerMetrics]]:
        rewards, metrics = {}, {}
        for a in answers:
            record = self.state.miners.get(a.uid)
            if record is None or record.hotkey != a.hotkey:  # the metagraph changed under us: skip this answer
                continue
            rewards[a.uid], metrics[a.uid] = challenge_reward(record.history, a.prediction, label, self.n.min_valid)
        return rewards, metrics

    def _draw_challenge(self) -> tuple[bytes, int, dict]:
        """(request body, label, meta). A sampler with `sample_encoded` (the challenge cache) hands over the PNG that
        protocol.encode_image made when the challenge was pooled, so it is neither decoded nor re-encoded here."""
        if hasattr(self.sampler, "sample_encoded"):
            png, label, meta = self.sampler.sample_encoded(self.rng)
            image_b64 = base64.b64encode(png).decode("ascii")
        else:
            image, label, meta = self.sampler.sample(self.rng)
            image_b64 = encode_image(image)
        return challenge_body(image_b64), int(label), meta

    async def challenge(self) -> RoundReport:
        start = time.perf_counter()
        report = RoundReport(step=self.state.step)
        report.chain_up = await self.sync()
        if self.snapshot is None:
            report.skipped = "no metagraph yet (chain unreachable since start-up)"
            logger.warning(f"challenge skipped: {report.skipped}")
            return report
        targets, idle = select_targets(self.snapshot, self.hotkey, self.n.sample_size, self.n.vpermit_stake_limit,
                                       self.rng)
        if not targets:
            report.skipped = "no serving miners in the metagraph"
            logger.info(f"challenge skipped: {report.skipped}")
        else:
            body, report.label, report.meta = await asyncio.to_thread(self._draw_challenge)
            report.answers = await self.client.query_all(targets, body)
            report.rewards, report.metrics = await asyncio.to_thread(self._score, report.answers, report.label)
        update_scores(self.state, report.rewards, self.n.moving_average_alpha, idle=idle)
        report.weights, weights_chain_up = await self.maybe_set_weights()
        report.chain_up = report.chain_up and weights_chain_up
        if report.skipped is None:
            self.state.step += 1
        self.store.save(self.state)  # one transaction: a kill -9 loses at most this challenge
        report.seconds = time.perf_counter() - start
        if report.skipped is None:
            self._record(report)
        return report

    def _record(self, r: RoundReport) -> None:
        scores = self.state.scores()
        miners = [{"uid": a.uid, "hotkey": a.hotkey, "prediction": a.prediction, "latency": round(a.latency, 4),
                   "status": a.status, "error": a.error, "detector": a.detector,
                   "reward": round(r.rewards.get(a.uid, 0.0), 6), "score": round(scores.get(a.uid, 0.0), 6),
                   **attribution_record(a)}
                  for a in r.answers]
        record = {"step": r.step, "time": time.time(), "label": r.label, "source": r.meta.get("source"),
                  "family": r.meta.get("family"), "augmentation": r.meta.get("augmentation"), "meta": r.meta,
                  "seconds": round(r.seconds, 4), "chain_up": r.chain_up, "miners": miners}
        if r.weights is not None:
            record["weights"] = {"block": r.weights.block, "set": r.weights.set, "reason": r.weights.reason,
                                 "weights": {str(u): round(w, 6) for u, w in r.weights.weights.items()}}
        if self.log is not None:
            self.log.append(record)
        valid = sum(a.valid for a in r.answers)
        m = self.metrics
        m.challenges.inc()
        m.answers.inc("valid", amount=valid)
        m.answers.inc("invalid", amount=len(r.answers) - valid)
        m.round_seconds.observe(r.seconds)
        m.miners_queried.set(len(r.answers))
        m.chain_up.set(float(r.chain_up))
        if self.state.last_weights_block is not None:
            m.last_weights_block.set(self.state.last_weights_block)
        m.observe_scores({uid: (miner.hotkey, miner.score) for uid, miner in self.state.miners.items()})
        if hasattr(self.sampler, "pool_stats"):  # a CachedSampler: was this round served from its pool?
            m.observe_cache(r.meta["cache"]["hit"], self.sampler.pool_stats())
        if self.wandb is not None:
            self.wandb.log({"label": r.label, "source": r.meta.get("source"), "valid_answers": valid,
                            "answers": len(r.answers), "round_seconds": r.seconds,
                            **{f"reward/{u}": v for u, v in r.rewards.items()},
                            **{f"score/{u}": v for u, v in scores.items()}}, step=r.step)
        correct = sum(a.valid and (a.prediction > 0.5) == bool(r.label) for a in r.answers)
        logger.info(f"challenge {r.step}: label={r.label} ({r.meta.get('source')}/{r.meta.get('family')}) "
                    f"{len(r.answers)} miners, {valid} valid, {correct} correct, {r.seconds:.2f}s")

    # ---- forever ----
    async def run(self, rounds: int = 0, stop: Optional[asyncio.Event] = None,
                  on_round: Optional[Callable[[RoundReport], None]] = None) -> int:
        """Challenge every challenge_interval seconds until `rounds` challenges were sent (0 = forever) or `stop`."""
        stop = stop or asyncio.Event()
        done = 0
        try:
            while not stop.is_set() and (rounds == 0 or done < rounds):
                started = time.monotonic()
                try:
                    report = await self.challenge()
                except Exception:  # noqa: BLE001 - a bad round is logged and skipped; the node keeps validating
                    logger.exception("challenge failed; the state keeps the last completed challenge")
                    report = RoundReport(step=self.state.step, skipped="error (see the log)")
                done += report.skipped is None
                if on_round is not None:
                    on_round(report)
                if rounds and done >= rounds:
                    break
                wait = max(0.0, self.n.challenge_interval - (time.monotonic() - started))
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                except TimeoutError:
                    pass
        finally:
            await self.client.close()
        return done

    def close(self) -> None:
        """Stop the sampler (a CachedSampler's filler process) and close the state, the log and W&B."""
        self.sampler.close()
        self.store.close()
        if self.log is not None:
            self.log.close()
        if self.wandb is not None:
            self.wandb.finish()
