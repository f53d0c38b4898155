"""Fan-out: one challenge body to many miners at once, each request signed for its receiver (btauth/1).

aiohttp, because on loopback a 256-miner round took 0.16 s with it against 0.6-1.1 s with httpx (whose pool
rescans every connection per request; see shared/docs/transport-benchmark.md). Keep-alive is 3 s, below uvicorn's
5 s idle timeout: with the default 15 s, rounds ~5 s apart lost ~10 % of requests to connections the miner had
just closed. A request that still fails on a dropped connection is retried once, re-signed, because a resent
nonce is a replay. Each request says how long the validator will wait (DEADLINE_HEADER). A redirect is never
followed (it would hand the signed request to a server the miner picks) and, like anything
`protocol.read_detect_answer` does not accept, is an invalid answer (prediction None); so is an answer over
MAX_ANSWER_BYTES. The body is read to its end however it is chunked.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import aiohttp
import bittensor as bt
from loguru import logger

from bitmind_lite.protocol import DEADLINE_HEADER, DETECT_PATH, Attribution, DetectRequest, read_detect_answer

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
    attribution: Optional[Attribution] = None  # the miner's generator guess, when it sent one (not scored)

    @property
    def valid(self) -> bool:
        return self.prediction is not None


def challenge_body(image_b64: str) -> bytes:
    """The request body, built once per challenge and sent to every miner."""
    return DetectRequest(image=image_b64).model_dump_json().encode()


class _RefusedAnswer(Exception):
    """An answer judged invalid before it is parsed (too large); the message is the Answer's error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, however the miner chunked it, but never more than MAX_ANSWER_BYTES."""
    too_large = f"answer larger than {MAX_ANSWER_BYTES} bytes"
    if resp.content_length is not None and resp.content_length > MAX_ANSWER_BYTES:
        raise _RefusedAnswer(resp.status, too_large)
    body = bytearray()
    # read(n) returns what has arrived so far (possibly one chunk of several), b"" only at the end of the body
    while chunk := await resp.content.read(MAX_ANSWER_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise _RefusedAnswer(resp.status, too_large)
    return bytes(body)


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
        self._redirected: set[int] = set()  # uids already warned about

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

    async def _post(self, target: Target, body: bytes, seconds_left: float) -> tuple[int, bytes]:
        headers = bt.http_auth.sign(self.keypair, method="POST", path=DETECT_PATH, body=body,
                                    receiver_ss58=target.hotkey)
        headers["Content-Type"] = "application/json"
        headers[DEADLINE_HEADER] = str(round(max(seconds_left, 0.0), 3))  # so the miner can drop it once we give up
        # Never follow a redirect: it would re-post the signed body to a server the miner chooses and credit the
        # miner with that server's answer.
        async with self._get_session().post(target.url, data=body, headers=headers, allow_redirects=False) as resp:
            if 300 <= resp.status < 400:
                self._log_redirect(target, resp.status, resp.headers.get("Location", ""))
            return resp.status, await _read_capped(resp)

    def _log_redirect(self, target: Target, status: int, location: str) -> None:
        """WARNING the first time a uid redirects, DEBUG after: a redirecting miner would otherwise flood the log."""
        log = logger.debug if target.uid in self._redirected else logger.warning
        self._redirected.add(target.uid)
        log(f"uid {target.uid} ({target.url}) answered HTTP {status} to {location[:200]!r}; redirect refused, "
            f"invalid answer")

    async def query(self, target: Target, body: bytes) -> Answer:
        start = time.perf_counter()
        status, error, prediction, detector, attribution = None, None, None, None, None
        try:
            async with asyncio.timeout(self.timeout):  # one budget for the request and its retry
                try:
                    status, raw = await self._post(target, body, self.timeout)
                except (aiohttp.ClientError, OSError) as e:
                    if not _dropped(e):
                        raise
                    left = self.timeout - (time.perf_counter() - start)
                    status, raw = await self._post(target, body, left)  # re-signed: a fresh nonce
            parsed, error = read_detect_answer(status, raw)
            if parsed is not None:
                prediction, detector, attribution = parsed.prediction, parsed.detector, parsed.attribution_guess()
        except _RefusedAnswer as e:
            status, error = e.status, str(e)
        except TimeoutError:
            error = f"timed out after {self.timeout:g} s"
        except (aiohttp.ClientError, OSError) as e:
            error = f"{type(e).__name__}: {e}"[:200]
        except Exception as e:  # noqa: BLE001 - one odd miner must never take the round down with it
            logger.exception(f"unexpected error querying uid {target.uid}")
            error = f"{type(e).__name__}: {e}"[:200]
        return Answer(target.uid, target.hotkey, prediction, time.perf_counter() - start, status, error, detector,
                      attribution)

    async def query_all(self, targets: Sequence[Target], body: bytes) -> list[Answer]:
        """Query every target concurrently; always one Answer per target, in order, never an exception."""
        return list(await asyncio.gather(*(self.query(t, body) for t in targets)))
