"""Deadline-aware, fair serving: expired requests are never computed, batches fit the deadline, and one caller's
flood does not starve another. First the batcher alone, then over HTTP (in-process server on 127.0.0.1, real
signatures and devnet metagraph, a scripted slow detector that records every image it computes).
"""
import asyncio
import time

import httpx
import numpy as np
import pytest
import torch
from loguru import logger

from bitmind_lite.detectors import Detector
from bitmind_lite.miner.batcher import Batcher, DeadlineExpired, Prediction, QueueFull
from bitmind_lite.protocol import DEADLINE_HEADER, DETECT_PATH, ErrorKind, encode_image
from miner_support import body_of, in_process_miner, keypair, sign, subnet  # noqa: F401


class Counting(Detector):
    """Takes `per_image` seconds per image (sleeping, so CPU load does not change it) and records each image it
    computed by its pixel value; answers value/255."""

    name, version = "counting", "1"

    def __init__(self, per_image: float):
        super().__init__(device="cpu", input_size=32)
        self.per_image, self.seen, self.batches = per_image, [], []

    def preprocess(self, img):
        self.seen.append(img.getpixel((0, 0))[0])
        return super().preprocess(img)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        self.batches.append(batch.shape[0])
        time.sleep(self.per_image * batch.shape[0])
        return torch.full((batch.shape[0],), 0.5)


def image(value: int) -> str:
    return encode_image(np.full((32, 32, 3), value, dtype=np.uint8))


async def started(detector, **kw) -> Batcher:
    batcher = Batcher(detector, **kw)
    batcher.start()
    await batcher.calibrate()  # as the service does at start
    return batcher


# ---------------------------------------------------------------- the batcher alone
def test_expired_request_is_dropped_before_compute():
    async def main():
        det = Counting(per_image=0.3)
        batcher = await started(det)
        det.seen.clear()  # the calibration image
        loop = asyncio.get_running_loop()
        busy = batcher.submit(image(1))
        await asyncio.sleep(0.05)  # the model is busy with `busy` for 0.3 s
        late = batcher.submit(image(2), deadline=loop.time() + 0.1)  # its caller gives up before the model is free
        with pytest.raises(DeadlineExpired) as info:
            await late
        await busy
        with pytest.raises(DeadlineExpired):  # a deadline already past is refused at the door
            batcher.submit(image(3), deadline=loop.time())
        await batcher.stop()
        return det, info.value

    det, expired = asyncio.run(main())
    assert det.seen == [1]  # the expired requests never reached the model
    assert expired.kind is ErrorKind.timeout and expired.status == 504 and "dropped before compute" in expired.message


def test_a_stale_slow_estimate_does_not_drop_requests_for_good():
    async def main():
        det = Counting(per_image=0.5)
        batcher = await started(det)  # measures 0.5 s per image
        det.per_image = 0.0  # then the model gets fast (the load spike is over)
        loop = asyncio.get_running_loop()
        answers = [await batcher.submit(image(1), deadline=loop.time() + 0.2) for _ in range(3)]
        await batcher.stop()
        return answers, batcher.seconds_per_image

    answers, per_image = asyncio.run(main())
    assert all(isinstance(a, Prediction) for a in answers)  # an idle model takes it and measures afresh
    assert per_image < 0.5


def test_batch_size_adapts_to_the_deadline():
    async def answered(per_image: float):
        det = Counting(per_image)
        batcher = await started(det, max_batch_size=16)
        deadline = asyncio.get_running_loop().time() + 2.0
        results = await asyncio.gather(*(batcher.submit(image(v), deadline=deadline) for v in range(1, 13)),
                                       return_exceptions=True)
        await batcher.stop()
        return det.batches[1:], results  # [0]: calibration

    # "CPU": 0.1 s per image, so 12 images (1.2 s) do not fit into half of the 2 s deadline: several batches,
    # each at most 0.5 * 2 s / 0.1 s = 10 images (the measured time per image is never below the sleep).
    batches, results = asyncio.run(answered(0.1))
    assert all(isinstance(r, Prediction) for r in results), results  # and every one answered in time
    assert len(batches) >= 2 and max(batches) <= 10 and sum(batches) == 12
    # "GPU": a millisecond per image: the batch stays as large as the queue.
    batches, results = asyncio.run(answered(0.001))
    assert batches == [12] and all(isinstance(r, Prediction) for r in results)


def test_flood_from_one_caller_does_not_starve_a_lower_stake_caller():
    async def main():
        det = Counting(per_image=0.1)
        batcher = await started(det, max_batch_size=16, queue_size=64)
        det.seen.clear()
        loop = asyncio.get_running_loop()
        flood = []
        for _ in range(40):  # 4 s of work against a 3 s deadline
            try:
                flood.append(batcher.submit(image(1), 200.0, "flooder", loop.time() + 3.0))
            except QueueFull as e:
                flood.append(e)
        other = batcher.submit(image(2), 50.0, "other", loop.time() + 3.0)  # a quarter of the flooder's stake
        answer = await other
        results = await asyncio.gather(*(f for f in flood if isinstance(f, asyncio.Future)), return_exceptions=True)
        await batcher.stop()
        return det, answer, [f for f in flood if isinstance(f, QueueFull)], results

    det, answer, shed, results = asyncio.run(main())
    assert isinstance(answer, Prediction) and 2 in det.seen
    assert det.seen.index(2) <= 16  # served in the first batches, not after the flooder's 40
    assert shed and all(e.status == 503 and e.retry_after >= 1 and "deadline" in e.message for e in shed)
    assert all(isinstance(r, (Prediction, DeadlineExpired)) for r in results)


# ---------------------------------------------------------------- over HTTP
@pytest.fixture(autouse=True)
def _symbols(subnet, monkeypatch):
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(subnet.root / "symbols.json"))


def signed(node, name: str, value: int, timeout=None) -> tuple[bytes, dict]:
    body = body_of(image(value))
    headers = sign(keypair(name), body, node.hotkey)
    if timeout is not None:
        headers[DEADLINE_HEADER] = str(timeout)
    return body, headers


def test_deadline_header_drops_a_late_request_before_compute(subnet):
    detector = Counting(per_image=0.6)
    with in_process_miner(subnet, detector, request_timeout=5.0) as node:
        detector.seen.clear()

        async def calls():
            async with httpx.AsyncClient(timeout=30) as client:
                def call(name, value, timeout):
                    body, headers = signed(node, name, value, timeout)
                    return client.post(node.url + DETECT_PATH, content=body, headers=headers)
                busy = asyncio.ensure_future(call("V1", 1, 5))
                await asyncio.sleep(0.2)  # the model holds V1's image for 0.6 s
                late = await call("V2", 2, 0.2)  # gives up before the model is free
                return await busy, late, await call("V3", 3, "soon"), await call("V4", 4, 1e9)

        busy, late, unparsable, huge = asyncio.run(calls())
    assert busy.status_code == 200
    assert late.status_code == 504 and late.json() == {"detail": "inference timed out after 0.2s", "kind": "timeout"}
    assert 2 not in detector.seen  # the late request was never computed
    assert unparsable.status_code == 200 and huge.status_code == 200  # bad or huge header: the miner's own timeout


def test_http_flood_does_not_starve_another_validator(subnet):
    lines = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG",
                      filter=lambda r: r["message"].startswith("detect "))
    detector = Counting(per_image=0.1)
    try:
        with in_process_miner(subnet, detector, request_timeout=2.0, max_batch_size=16, queue_size=64) as node:
            async def calls():
                async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as client:
                    def call(name, value):
                        body, headers = signed(node, name, value, 2)
                        return client.post(node.url + DETECT_PATH, content=body, headers=headers)

                    async def steady():  # the other validator: one request every 0.3 s, lower stake than the flood
                        answers = []
                        for i in range(4):
                            answers.append(await call("V0", 10 + i))
                            await asyncio.sleep(0.3)
                        return answers
                    flood = [call("V7", 1) for _ in range(30)]  # 3 s of work against a 2 s deadline
                    return await asyncio.gather(steady(), asyncio.gather(*flood))

            steady, flood = asyncio.run(calls())
    finally:
        logger.remove(sink)
    assert [r.status_code for r in steady] == [200] * 4, [r.text for r in steady]
    refused = [r for r in flood if r.status_code != 200]
    assert refused and all(r.status_code in (503, 504) for r in refused), [r.text for r in refused]
    for r in refused:  # each refusal says what kind it is, with the kind's status
        kind = ErrorKind(r.json()["kind"])
        assert kind.status == r.status_code and r.json()["detail"]
        if kind is ErrorKind.unavailable:
            assert int(r.headers["Retry-After"]) >= 1
    assert len(lines) == 34 and sum(line.startswith("detect 200") for line in lines) == 34 - len(refused)
