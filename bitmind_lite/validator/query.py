"""Fan-out: one challenge body to many miners at once, each request signed for its receiver (btauth/1).

aiohttp, because on loopback a 256-miner round took 0.16 s with it against 0.6-1.1 s with httpx (whose pool
rescans every connection per request; see shared/docs/transport-benchmark.md). Keep-alive is 3 s, below uvicorn's
5 s idle timeout: with the default 15 s, rounds ~5 s apart lost ~10 % of requests to connections the miner had
just closed. A request that still fails on a dropped connection is retried once, re-signed, because a resent
nonce is a replay. Anything but a finite number in [0, 1] is an invalid answer (prediction None).
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import aiohttp
import bittensor as bt
from loguru import logger

from bitmind_lite.protocol import DETECT_PATH, ImageSynapse
from bitmind_lite.validator.reward import is_valid_prediction

MAX_ANSWER_BYTES = 64 * 1024  # an answer is ~100 bytes; anything much larger is not worth reading
KEEPALIVE_S = 3.0


@dataclass(frozen=True)
class Target:
    uid: int
    hotkey: str
    ip: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}{DETECT_PATH}"


@dataclass(frozen=True)
class Answer:
    uid: int
    hotkey: str
    prediction: Optional[float]  # None = no valid answer
    latency: float  # seconds, including a retry
    status: Optional[int]  # HTTP status, None when no response came back
    error: Optional[str]  # why the answer is invalid; None when valid
    detector: Optional[str] = None

    @property
    def valid(self) -> bool:
        return self.prediction is not None


def challenge_body(image_b64: str) -> bytes:
    """The request body, built once per challenge and sent to every miner."""
    return ImageSynapse(image=image_b64).model_dump_json(include={"image"}).encode()


def parse_answer(status: int, raw: bytes) -> tuple[Optional[float], Optional[str], Optional[str]]:
    """(prediction, detector, error) from a miner's HTTP response."""
    if status != 200:
        try:
            detail = json.loads(raw).get("detail")
        except (ValueError, AttributeError):
            detail = None
        return None, None, f"HTTP {status}" + (f": {str(detail)[:200]}" if detail else "")
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None, "answer is not JSON" if raw else "empty answer"
    if not isinstance(data, dict) or "prediction" not in data:
        return None, None, "answer has no prediction"
    p = data["prediction"]
    detector = data.get("detector") if isinstance(data.get("detector"), str) else None
    if not is_valid_prediction(p):
        return None, detector, f"prediction {str(p)[:40]!r} is not a finite number in [0, 1]"
    return float(p), detector, None


def _dropped(e: BaseException) -> bool:
    """A connection that closed under us (a stale keep-alive, a miner restart): worth one re-signed retry."""
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(e, aiohttp.ClientOSError) and not isinstance(e, aiohttp.ClientConnectorError)


class MinerClient:
    """One shared aiohttp session for the life of the validator. Use inside the event loop that queries."""

    def __init__(self, keypair, timeout: float):
        self.keypair, self.timeout = keypair, timeout
        self._session: Optional[aiohttp.ClientSession] = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE_S, limit=0)
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("User-Agent",))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "MinerClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _post(self, target: Target, body: bytes) -> tuple[int, bytes]:
        headers = bt.http_auth.sign(self.keypair, method="POST", path=DETECT_PATH, body=body,
                                    receiver_ss58=target.hotkey)
        headers["Content-Type"] = "application/json"
        async with self._get_session().post(target.url, data=body, headers=headers) as resp:
            raw = await resp.content.read(MAX_ANSWER_BYTES)
            return resp.status, raw

    async def query(self, target: Target, body: bytes) -> Answer:
        start = time.perf_counter()
        status, error, prediction, detector = None, None, None, None
        try:
            async with asyncio.timeout(self.timeout):  # one budget for the request and its retry
                try:
                    status, raw = await self._post(target, body)
                except (aiohttp.ClientError, OSError) as e:
                    if not _dropped(e):
                        raise
                    status, raw = await self._post(target, body)  # re-signed: a fresh nonce
            prediction, detector, error = parse_answer(status, raw)
        except TimeoutError:
            error = f"timed out after {self.timeout:g} s"
        except (aiohttp.ClientError, OSError) as e:
            error = f"{type(e).__name__}: {e}"[:200]
        except Exception as e:  # noqa: BLE001 - one odd miner must never take the round down with it
            logger.exception(f"unexpected error querying uid {target.uid}")
            error = f"{type(e).__name__}: {e}"[:200]
        return Answer(target.uid, target.hotkey, prediction, time.perf_counter() - start, status, error, detector)

    async def query_all(self, targets: Sequence[Target], body: bytes) -> list[Answer]:
        """Query every target concurrently; always one Answer per target, in order, never an exception."""
        return list(await asyncio.gather(*(self.query(t, body) for t in targets)))
