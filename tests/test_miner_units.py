"""Miner parts on their own (no HTTP, no chain): gate decisions, rate limiting, batching, priority, metrics text."""
import asyncio
import time

import numpy as np
import pytest
import torch
from PIL import Image

from bitmind_lite.chain import MetagraphSnapshot, NeuronInfo
from bitmind_lite.config import BlacklistConfig
from bitmind_lite.detectors import Detector
from bitmind_lite.miner.batcher import Batcher, ModelError, QueueFull
from bitmind_lite.miner.gate import Gate, RateLimiter, Rejection
from bitmind_lite.miner.metrics import MinerMetrics
from bitmind_lite.protocol import InvalidImage, encode_image

VALI, NO_PERMIT, POOR, STRANGER = "5Vali", "5NoPermit", "5Poor", "5Stranger"


def snapshot():
    return MetagraphSnapshot(netuid=7, block=100, neurons=[
        NeuronInfo(0, VALI, 500.0, True, None), NeuronInfo(1, NO_PERMIT, 500.0, False, None),
        NeuronInfo(2, POOR, 1.0, True, None)])


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def rejection(gate, hotkey) -> Rejection:
    with pytest.raises(Rejection) as info:
        gate.admit(hotkey)
    return info.value


def test_gate_checks_membership_permit_and_stake():
    gate = Gate(BlacklistConfig(min_stake=10))
    assert rejection(gate, VALI).status == 503  # no metagraph yet: refuse, do not guess
    gate.update(snapshot())
    assert gate.admit(VALI) == 500.0  # the stake is the queue priority
    r = rejection(gate, STRANGER)
    assert r.status == 403 and "not registered on subnet 7" in r.message
    r = rejection(gate, NO_PERMIT)
    assert r.status == 403 and "validator permit" in r.message
    r = rejection(gate, POOR)
    assert r.status == 403 and "below the minimum 10" in r.message


def test_gate_testing_flags_open_it_up():
    gate = Gate(BlacklistConfig(allow_non_registered=True, force_validator_permit=False))
    assert gate.admit(STRANGER) == 0.0  # works even before the first metagraph
    gate.update(snapshot())
    assert gate.admit(NO_PERMIT) == 500.0
    assert gate.admit(STRANGER) == 0.0


def test_gate_follows_a_new_snapshot():
    gate = Gate(BlacklistConfig())
    gate.update(snapshot())
    gate.admit(VALI)
    gate.update(MetagraphSnapshot(netuid=7, block=101, neurons=[NeuronInfo(0, "5Other", 5.0, True, None)]))
    assert rejection(gate, VALI).status == 403  # deregistered validators lose access at the next refresh


def test_rate_limit_per_caller_with_refill():
    clock = Clock()
    gate = Gate(BlacklistConfig(rate_limit=6, force_validator_permit=False), clock=clock)
    gate.update(snapshot())
    for _ in range(6):
        gate.admit(VALI)
    r = rejection(gate, VALI)
    assert r.status == 429 and r.retry_after == 10  # 6 per minute: one token every 10 s
    gate.admit(NO_PERMIT)  # another caller has its own budget
    clock.now += 10.0
    gate.admit(VALI)
    assert rejection(gate, VALI).status == 429


def test_rate_limiter_forgets_idle_callers_only():
    clock = Clock()
    limiter = RateLimiter(60, clock, max_callers=3)
    for key in "abc":
        limiter.acquire(key)
    clock.now += 0.5
    limiter.acquire("d")  # everyone is still refilling: nobody may be forgotten
    assert set(limiter.buckets) == set("abcd")
    clock.now += 120.0
    limiter.acquire("e")  # all buckets are full again: forgetting them changes nothing
    assert set(limiter.buckets) == {"e"}


class Scripted(Detector):
    """Answers the mean pixel value (so each image has its own answer); can be made slow or broken."""

    name, version = "scripted", "1"

    def __init__(self):
        super().__init__(device="cpu", input_size=32)
        self.delay, self.fail, self.batches = 0.0, False, []

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.shape[0])
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        return batch.mean(dim=(1, 2, 3)).sigmoid()


def image(value: int) -> str:
    return encode_image(np.full((32, 32, 3), value, dtype=np.uint8))


def run(coro):
    return asyncio.run(coro)


def test_batcher_batches_concurrent_requests_and_answers_each():
    async def main():
        det = Scripted()
        batcher = Batcher(det, max_batch_size=8, max_wait_ms=50, metrics=MinerMetrics())
        batcher.start()
        values = [10 * i for i in range(8)]
        preds = await asyncio.gather(*(batcher.submit(image(v)) for v in values))
        await batcher.stop()
        return det, batcher, preds, values

    det, batcher, preds, values = run(main())
    assert det.batches == [8]
    expected = Scripted().predict_images([Image.new("RGB", (32, 32), (v,) * 3) for v in values])
    assert [p.value for p in preds] == pytest.approx(expected, abs=1e-6)
    assert len(set(round(p.value, 6) for p in preds)) == 8 and all(p.batch_size == 8 for p in preds)
    assert batcher.metrics.batch_size.counts[batcher.metrics.batch_size.buckets.index(8)] == 1


def test_batcher_greedy_mode_batches_what_queued_while_the_model_ran():
    async def main():
        det = Scripted()
        det.delay = 0.05
        batcher = Batcher(det, max_batch_size=16, max_wait_ms=0)
        batcher.start()
        first = batcher.submit(image(1))
        await asyncio.sleep(0.01)  # the model is now busy with the first request
        rest = [batcher.submit(image(v)) for v in range(2, 7)]
        await asyncio.gather(first, *rest)
        await batcher.stop()
        return det.batches

    assert run(main()) == [1, 5]


def test_bad_image_fails_alone_and_model_error_keeps_batcher_alive():
    async def main():
        det = Scripted()
        batcher = Batcher(det, max_batch_size=4, max_wait_ms=50)
        batcher.start()
        good, bad = batcher.submit(image(5)), batcher.submit("bm90IGFuIGltYWdl")
        results = await asyncio.gather(good, bad, return_exceptions=True)
        det.fail = True
        failed = await asyncio.gather(batcher.submit(image(5)), return_exceptions=True)
        det.fail = False
        after = await batcher.submit(image(5))
        await batcher.stop()
        return results, failed[0], after

    (good, bad), failed, after = run(main())
    assert 0 < good.value < 1 and isinstance(bad, InvalidImage) and bad.kind == "format"
    assert isinstance(failed, ModelError) and "RuntimeError: boom" in str(failed)
    assert after.value == pytest.approx(good.value)


def test_full_queue_serves_higher_stake_first():
    async def main():
        det = Scripted()
        det.delay = 0.2
        batcher = Batcher(det, max_batch_size=1, max_wait_ms=0, queue_size=2)
        batcher.start()
        served = []

        def submit(name, priority):
            future = batcher.submit(image(1), priority)
            future.add_done_callback(lambda f: served.append(name))  # batches complete in service order
            return future

        busy = submit("busy", 1)
        await asyncio.sleep(0.05)  # the model holds `busy`; the queue is empty again
        low1, low2 = submit("low1", 1), submit("low2", 2)
        with pytest.raises(QueueFull):
            batcher.submit(image(4), stake=1)  # the queue is full of requests at least as important
        high = submit("high", 100)  # displaces the lowest-stake waiting request
        results = await asyncio.gather(busy, low1, low2, high, return_exceptions=True)
        await batcher.stop()
        return served, results

    served, (busy, low1, low2, high) = run(main())
    assert isinstance(low1, QueueFull) and "higher-stake" in str(low1)
    assert served == ["low1", "busy", "high", "low2"]  # low1 failed at once; then stake order


def test_metrics_text_format():
    m = MinerMetrics()
    m.observe_request(200, 0.003)
    m.observe_request(401, 0.0004)
    m.batch_size.observe(3)
    m.set_detector("npr", "abc")
    m.set_detector("npr", "def")  # a reload replaces the info series instead of adding one
    text = m.render()
    assert 'bitmind_miner_requests_total{status="200"} 1.0' in text and 'bitmind_miner_requests_total{status="401"} 1.0' in text
    assert 'bitmind_miner_request_seconds_bucket{le="0.001"} 1.0' in text and 'bitmind_miner_request_seconds_bucket{le="0.005"} 2.0' in text
    assert 'bitmind_miner_request_seconds_bucket{le="+Inf"} 2.0' in text and "bitmind_miner_request_seconds_count 2.0" in text
    assert 'bitmind_miner_batch_size_bucket{le="2.0"} 0.0' in text and 'bitmind_miner_batch_size_bucket{le="4.0"} 1.0' in text
    assert 'bitmind_miner_detector_info{detector="npr",version="def"} 1.0' in text and 'version="abc"' not in text
    assert "# TYPE bitmind_miner_batch_size histogram" in text and "# TYPE bitmind_miner_requests_total counter" in text
