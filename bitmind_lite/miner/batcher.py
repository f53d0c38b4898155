"""Gathers concurrent requests into batches and runs the detector off the event loop, fairly and inside deadlines.

One model thread does all model work (decode + preprocess + predict, and weight reloads between batches), so the
event loop only verifies, gates and queues. Three rules keep one caller from starving the others:

* Fair queue (self-clocked fair queueing, weighted by stake): each caller's requests get virtual tags spaced
  1/stake apart, starting no earlier than the tag now being served; the queue is served in tag order. A caller
  that floods only pushes its own later requests back, so another caller's request is served within about one of
  the flooder's, and a caller with twice the stake gets twice the share when both keep the queue busy. When the
  queue is full, the request with the latest tag (the most over its share) gets `QueueFull` (503 + Retry-After).
* Deadlines: every request carries the moment its caller gives up. A request whose deadline has passed, or (when other
  requests wait) is nearer than one image's time, is dropped before compute (`DeadlineExpired`, 504);
  one that could not be answered in time behind the requests queued ahead of it is refused at once (503 +
  Retry-After) instead of queued.
* Adaptive batch size: an EWMA of model seconds per image sizes each batch so that it finishes within
  `BATCH_SHARE_OF_DEADLINE` of the shortest remaining deadline in it (always at least one image, at most
  `max_batch_size`). The rest of the deadline is for a request arriving mid-batch: it waits at most one batch.
  On a CPU batches shrink to a few images; on a GPU a batch costs milliseconds, so they stay at the maximum.
  `calibrate()` (the service calls it at start) times one image, so even the first batches are sized.
Batching is greedy: while a batch runs, new requests queue, and the next batch takes what fits; `max_wait_ms > 0`
additionally holds a partial batch that long for more requests.
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Hashable, Optional

import torch
from loguru import logger
from PIL import Image
from pydantic import ValidationError

from bitmind_lite.miner.gate import Rejection
from bitmind_lite.protocol import Attribution, ErrorKind, InvalidImage, decode_image

BATCH_SHARE_OF_DEADLINE = 0.5  # a batch may take this share of the shortest remaining deadline in it
EWMA_ALPHA = 0.3  # weight of the newest batch in the seconds-per-image estimate
MIN_WEIGHT = 1e-3  # a caller without stake (allow_non_registered) still gets a turn, after everyone else's
FORGET_CALLERS_AT = 4096  # callers remembered for their fair-queue tag before the ones without a backlog go


class QueueFull(Rejection):
    """No room for this request, or no way to answer it before its deadline: retry later."""

    kind = ErrorKind.unavailable

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message, retry_after=retry_after)


class ModelError(Rejection):
    """The detector failed on a batch; the message is safe to return to the caller."""

    kind = ErrorKind.model_error


class DeadlineExpired(Rejection):
    """The caller's deadline passes before an answer could be ready: dropped without computing it."""

    kind = ErrorKind.timeout


@dataclass(frozen=True)
class Prediction:
    value: float  # P(AI-generated) in [0, 1]
    version: str  # the detector version that produced it (changes on hot reload)
    model_ms: float  # wall time of the batch this request was part of
    batch_size: int
    attribution: Optional[Attribution] = None  # the detector's generator guess, when it makes one


@dataclass(order=True)
class _Item:
    key: tuple  # (virtual tag, arrival): the caller's fair-share turn, then first come first served
    image: str = field(compare=False)
    future: asyncio.Future = field(compare=False)
    caller: Optional[Hashable] = field(compare=False)
    weight: float = field(compare=False)
    deadline: float = field(compare=False)  # event-loop time when the caller gives up (inf: never)


class Batcher:
    def __init__(self, detector, max_batch_size: int = 16, max_wait_ms: float = 0.0, queue_size: int = 64,
                 metrics=None):
        self.detector = detector
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics
        self.seconds_per_image: Optional[float] = None  # EWMA over batches; None until the first one
        self._heap: list[_Item] = []
        self._arrival = itertools.count()
        self._virtual_time = 0.0  # tag of the request last taken for service
        self._last_tag: dict[Hashable, float] = {}  # caller -> tag of its latest queued request
        self._busy_until = -math.inf  # event-loop time the running batch is expected to finish
        self._arrived: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._warned_attribution = False

    # ---- lifecycle (call on the event loop that serves requests) ----
    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def calibrate(self) -> None:
        """Time one blank image on the model thread, so that the first batches are sized to deadlines too
        (without it the first batch is as large as what queued)."""
        try:
            seconds = await self.run_in_model_thread(self._time_one_image)
        except Exception as e:  # a detector that cannot do this still serves; the first batch measures instead
            logger.warning(f"could not time the detector at start: {type(e).__name__}: {e}")
            return
        self._update_estimate(seconds, 1)
        logger.info(f"model time per image at start: {seconds * 1000:.1f} ms (batches adapt to deadlines from it)")

    async def stop(self) -> None:
        """Answer what is queued, then stop the worker and the model thread."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # ---- requests ----
    def submit(self, image_b64: str, stake: float = 0.0, caller: Optional[Hashable] = None,
               deadline: Optional[float] = None) -> asyncio.Future:
        """Queue one base64 image for `caller` (None: a one-off caller) with weight `stake`, to be answered
        before `deadline` (event-loop time; None: no deadline). The returned future resolves to a `Prediction`
        or raises `InvalidImage`, `ModelError`, `QueueFull` or `DeadlineExpired`; this call itself raises
        `QueueFull` or `DeadlineExpired` when the request is refused at once."""
        if self._closing or self._task is None:
            raise QueueFull("the miner is shutting down")
        loop = asyncio.get_running_loop()
        deadline = math.inf if deadline is None else deadline
        if deadline <= loop.time():
            self._count("expired")
            raise DeadlineExpired("the deadline passed before the request was queued")
        weight = max(stake, MIN_WEIGHT)
        tag = max(self._virtual_time, self._last_tag.get(caller, -math.inf)) + 1.0 / weight
        item = _Item((tag, next(self._arrival)), image_b64, loop.create_future(), caller, weight, deadline)
        self._make_room(item)
        self._refuse_if_too_late(item, loop.time())
        if caller is not None:
            self._last_tag[caller] = tag
        heapq.heappush(self._heap, item)
        self._arrived.set()
        return item.future

    def _make_room(self, item: _Item) -> None:
        """When the queue is full, the request furthest behind in fair order loses its place (or `item` is
        refused, when that is itself)."""
        if len(self._heap) < self.queue_size:
            return
        self._heap = [i for i in self._heap if not i.future.done()]  # callers that gave up hold no place
        heapq.heapify(self._heap)
        if len(self._heap) < self.queue_size:
            return
        last = max(self._heap)  # O(queue_size), only when full
        if last.key <= item.key:
            self._count("full")
            raise QueueFull(f"the miner is busy ({len(self._heap)} requests queued)")
        self._heap.remove(last)
        heapq.heapify(self._heap)
        if self._last_tag.get(last.caller) == last.key[0]:  # its caller's turn goes back to where it was
            self._last_tag[last.caller] = last.key[0] - 1.0 / last.weight
        self._count("displaced")
        reason = ("a higher-stake request" if item.weight > last.weight
                  else "a request from a caller with fewer requests queued")
        last.future.set_exception(QueueFull(f"displaced by {reason}"))

    def _refuse_if_too_late(self, item: _Item, now: float) -> None:
        """Refuse now what the requests queued ahead of it would push past its deadline (a flooding caller's
        surplus, typically): an immediate 503 with Retry-After, not a 504 after the caller's whole timeout."""
        per_image, remaining = self.seconds_per_image, item.deadline - now
        if per_image is None or math.isinf(remaining):
            return
        ahead = sum(1 for i in self._heap if i.key < item.key and not i.future.done())
        wait = max(0.0, self._busy_until - now) + (ahead + 1) * per_image
        if ahead and wait > remaining:
            self._count("shed")
            raise QueueFull(f"the miner cannot answer inside your {remaining:.1f}s deadline: {ahead} requests are "
                            f"queued ahead of yours (~{wait:.1f}s of work)", retry_after=math.ceil(wait - remaining))

    async def run_in_model_thread(self, fn: Callable, *args):
        """Run `fn` on the model thread, between batches (used for weight reloads)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def queued(self) -> int:
        return sum(1 for item in self._heap if not item.future.done())

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.dropped.inc(reason)

    # ---- worker ----
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._heap:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            if self.max_wait > 0 and len(self._heap) < self.max_batch_size and not self._closing:
                await self._wait_for_more(loop.time() + self.max_wait)
            batch = self._take(loop.time())
            if not batch:
                continue
            self._busy_until = loop.time() + len(batch) * (self.seconds_per_image or 0.0)
            try:
                results, version, seconds = await loop.run_in_executor(
                    self._executor, self._infer, [item.image for item in batch])
            except Exception as e:  # the model failed: every caller in the batch gets a 500, the node keeps going
                logger.opt(exception=e).error(f"model error on a batch of {len(batch)}")
                error = ModelError(f"model error: {type(e).__name__}: {e}")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            finally:
                self._busy_until = -math.inf
            self._measure(seconds, len(batch))
            for item, result in zip(batch, results):
                if item.future.done():  # the caller gave up meanwhile
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    value, attribution = result
                    item.future.set_result(Prediction(value, version, seconds * 1000.0, len(batch), attribution))

    async def _wait_for_more(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while len(self._heap) < self.max_batch_size and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self, now: float) -> list[_Item]:
        """Pop the next batch in fair order: skip callers that gave up, drop requests that cannot be answered
        before their deadline, and stop where one more image would make the batch outlast its share of the
        shortest remaining deadline."""
        batch, tightest = [], math.inf
        per_image = self.seconds_per_image
        while self._heap and len(batch) < self.max_batch_size:
            item = self._heap[0]
            if item.future.done():
                heapq.heappop(self._heap)
                continue
            remaining = item.deadline - now
            # Its caller gave up, or will before one image is done: never computed. The second only when other
            # work would use the model meanwhile; a lone request is worth trying (and re-measures the model: a
            # stale estimate after a slowdown would otherwise drop every request for good).
            too_late = per_image is not None and remaining < per_image
            if remaining <= 0 or (too_late and (batch or any(not i.future.done() for i in self._heap[1:]))):
                heapq.heappop(self._heap)
                self._count("expired")
                item.future.set_exception(DeadlineExpired(
                    "dropped before compute: the deadline passed while it was queued" if remaining <= 0 else
                    f"dropped before compute: {remaining:.2f}s left, an image takes ~{per_image:.2f}s"))
                continue
            if batch and per_image is not None and \
                    (len(batch) + 1) * per_image > BATCH_SHARE_OF_DEADLINE * min(tightest, remaining):
                break
            heapq.heappop(self._heap)
            batch.append(item)
            tightest = min(tightest, remaining)
            self._virtual_time = item.key[0]
        if len(self._last_tag) > FORGET_CALLERS_AT:  # a caller whose turn has come carries no debt: forget it
            self._last_tag = {c: t for c, t in self._last_tag.items() if t > self._virtual_time}
        return batch

    def _measure(self, seconds: float, images: int) -> None:
        self._update_estimate(seconds, images)
        if self.metrics is not None:
            self.metrics.model_seconds.observe(seconds)
            self.metrics.batch_size.observe(images)

    def _update_estimate(self, seconds: float, images: int) -> None:
        sample = seconds / images
        old = self.seconds_per_image
        self.seconds_per_image = sample if old is None else old + EWMA_ALPHA * (sample - old)
        if self.metrics is not None:
            self.metrics.seconds_per_image.set(self.seconds_per_image)

    def _time_one_image(self) -> float:
        size = getattr(self.detector, "input_size", 256)
        start = time.perf_counter()
        self.detector.predict(torch.stack([self.detector.preprocess(Image.new("RGB", (size, size)))]))
        return time.perf_counter() - start

    def _attribution(self, guess) -> Optional[Attribution]:
        """The detector's guess as the protocol's model, or None: a guess the protocol refuses (too many classes,
        a probability out of range) is dropped, never the prediction it came with."""
        if guess is None:
            return None
        try:
            return Attribution.model_validate(guess)
        except ValidationError as e:
            if not self._warned_attribution:  # once: the same detector would repeat it on every image
                logger.warning(f"dropping the detector's attributions, the protocol refuses them: {e}")
                self._warned_attribution = True
            return None

    def _infer(self, images: list[str]) -> tuple[list, str, float]:
        """On the model thread: decode each image (a bad one fails alone), then one predict for the good ones.
        Each good image's result is (P(AI), attribution or None)."""
        start = time.perf_counter()
        detector = self.detector
        version = detector.version  # read here: reloads run on this same thread, so this is the model that answers
        results: list = [None] * len(images)
        tensors, slots = [], []
        for i, image in enumerate(images):
            try:
                tensors.append(detector.preprocess(decode_image(image)))
                slots.append(i)
            except InvalidImage as e:
                results[i] = e
            except Exception as e:  # an image the detector cannot handle fails alone, not its whole batch
                results[i] = ModelError(f"model error: cannot preprocess the image: {type(e).__name__}: {e}")
        if tensors:
            scores, guesses = detector.predict_with_attribution(torch.stack(tensors))
            predictions = scores.reshape(-1).tolist()
            if len(predictions) != len(tensors):
                raise RuntimeError(f"detector returned {len(predictions)} predictions for {len(tensors)} images")
            if guesses is None or len(guesses) != len(tensors):
                guesses = [None] * len(tensors)
            for i, p, guess in zip(slots, predictions, guesses):
                results[i] = (min(1.0, max(0.0, p)), self._attribution(guess)) if math.isfinite(p) else ModelError(
                    "model error: the detector produced a non-finite prediction")
        return results, version, time.perf_counter() - start
