"""Gathers concurrent requests into batches and runs the detector off the event loop.

One model thread does all model work (decode + preprocess + predict, and weight reloads between batches), so the
event loop only verifies, gates and queues. Batching is greedy by default: while a batch runs, new requests queue,
and the next batch takes all of them (up to `max_batch_size`); `max_wait_ms > 0` additionally holds a partial batch
that long for more requests. The queue is bounded and ordered by priority (caller stake): when it is full, a
higher-stake request displaces the lowest-stake one, which gets `QueueFull` (HTTP 503 + Retry-After).
"""
from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from loguru import logger

from bitmind_lite.protocol import InvalidImage, decode_image


class QueueFull(Exception):
    """The queue is full of requests at least as important as this one."""


class ModelError(Exception):
    """The detector failed on a batch; the message is safe to return to the caller."""


@dataclass(frozen=True)
class Prediction:
    value: float  # P(AI-generated) in [0, 1]
    version: str  # the detector version that produced it (changes on hot reload)
    model_ms: float  # wall time of the batch this request was part of
    batch_size: int


@dataclass(order=True)
class _Item:
    key: tuple  # (-priority, arrival): highest stake first, then first come first served
    image: str = field(compare=False)
    future: asyncio.Future = field(compare=False)


class Batcher:
    def __init__(self, detector, max_batch_size: int = 16, max_wait_ms: float = 0.0, queue_size: int = 64,
                 metrics=None):
        self.detector = detector
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.metrics = metrics
        self._heap: list[_Item] = []
        self._arrival = itertools.count()
        self._arrived: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    # ---- lifecycle (call on the event loop that serves requests) ----
    def start(self) -> None:
        self._arrived = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Answer what is queued, then stop the worker and the model thread."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)

    # ---- requests ----
    def submit(self, image_b64: str, priority: float = 0.0) -> asyncio.Future:
        """Queue one base64 image; the returned future resolves to a `Prediction` or raises
        `InvalidImage`, `ModelError` or `QueueFull`."""
        if self._closing or self._task is None:
            raise QueueFull("the miner is shutting down")
        future = asyncio.get_running_loop().create_future()
        item = _Item((-priority, next(self._arrival)), image_b64, future)
        if len(self._heap) >= self.queue_size:
            lowest = max(self._heap)  # O(queue_size), only when full
            if lowest.key <= item.key:
                raise QueueFull(f"the miner is busy ({len(self._heap)} requests queued)")
            self._heap.remove(lowest)
            heapq.heapify(self._heap)
            if not lowest.future.done():
                lowest.future.set_exception(QueueFull("displaced by a higher-stake request"))
        heapq.heappush(self._heap, item)
        self._arrived.set()
        return future

    async def run_in_model_thread(self, fn: Callable, *args):
        """Run `fn` on the model thread, between batches (used for weight reloads)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def queued(self) -> int:
        return len(self._heap)

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
            batch = self._take()
            if self.metrics is not None:
                self.metrics.queue_depth.set(len(self._heap))
            if not batch:
                continue
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
            if self.metrics is not None:
                self.metrics.model_seconds.observe(seconds)
                self.metrics.batch_size.observe(len(batch))
            for item, result in zip(batch, results):
                if item.future.done():  # the caller timed out meanwhile
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(Prediction(result, version, seconds * 1000.0, len(batch)))

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

    def _take(self) -> list[_Item]:
        """Pop up to max_batch_size live items (callers that timed out are skipped)."""
        batch = []
        while self._heap and len(batch) < self.max_batch_size:
            item = heapq.heappop(self._heap)
            if not item.future.done():
                batch.append(item)
        return batch

    def _infer(self, images: list[str]) -> tuple[list, str, float]:
        """On the model thread: decode each image (a bad one fails alone), then one predict for the good ones."""
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
            predictions = detector.predict(torch.stack(tensors)).reshape(-1).tolist()
            if len(predictions) != len(tensors):
                raise RuntimeError(f"detector returned {len(predictions)} predictions for {len(tensors)} images")
            for i, p in zip(slots, predictions):
                results[i] = min(1.0, max(0.0, p)) if math.isfinite(p) else ModelError(
                    "model error: the detector produced a non-finite prediction")
        return results, version, time.perf_counter() - start
