"""The miner's HTTP API (FastAPI): POST /v1/detect, GET /health, GET /metrics.

A detect request goes: size-limited body read (413) -> btauth/1 signature check (401) -> metagraph gate
(403/429/503) -> parse (400) -> batcher (413/415/400 for bad images, 503 when full, 500 on model error or timeout)
-> `DetectResponse`. The first three form the `authorized` dependency; the key, the nonce store and the request
schema are built once, when the app is created.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from bittensor import http_auth
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from loguru import logger
from pydantic import BaseModel, ValidationError

from bitmind_lite import __version__
from bitmind_lite.miner.batcher import ModelError, QueueFull
from bitmind_lite.miner.gate import Rejection
from bitmind_lite.protocol import DETECT_PATH, MAX_BODY_BYTES, DetectResponse, ImageSynapse, InvalidImage

if TYPE_CHECKING:
    from bitmind_lite.miner.service import MinerService

IMAGE_ERROR_STATUS = {"size": 413, "format": 415}  # any other InvalidImage kind is a 400
MODEL_MS_HEADER = "X-Model-Ms"  # wall time of the batch that answered: lets clients split latency
BATCH_HEADER = "X-Batch-Size"


@dataclass(frozen=True)
class Authorized:
    """A request that passed the size limit, the signature check and the gate."""

    body: bytes
    hotkey: str
    priority: float  # the caller's stake: higher is served first when the queue is full


class Health(BaseModel):
    status: str
    hotkey: str
    detector: str
    version: str
    uid: Optional[int]
    block: Optional[int]


def _error(status: int, message: str, retry_after: Optional[float] = None) -> HTTPException:
    headers = {"Retry-After": str(max(1, int(retry_after)))} if retry_after is not None else None
    return HTTPException(status, message, headers=headers)


class DetectMetrics:
    """Pure ASGI middleware: status and latency of every detect request, whichever layer answered it."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != DETECT_PATH:
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_and_record(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.observe_request(status, time.perf_counter() - start)


def create_app(service: "MinerService") -> FastAPI:
    hotkey = service.hotkey_ss58
    nonces = service.nonces
    gate, batcher, detector = service.gate, service.batcher, service.detector
    timeout = service.cfg.neuron.request_timeout

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="bitmind-lite miner", version=__version__, lifespan=lifespan,
                  description="Answers signed image challenges with P(AI-generated).")
    app.add_middleware(DetectMetrics, metrics=service.metrics)

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to be too large (header or running count)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise _error(400, "Content-Length is not a number")
            if int(declared) > MAX_BODY_BYTES:
                raise _error(413, f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _error(413, f"request body is larger than the {MAX_BODY_BYTES} byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def verify_signature(request: Request, body: bytes) -> http_auth.Caller:
        """btauth/1 over the raw body and the path exactly as sent, bound to this miner's hotkey."""
        if http_auth.HEADER_CRYPTO in request.headers:  # hotkeys are sr25519: refuse any other declared scheme
            raise _error(401, f"only sr25519 signatures are accepted; drop {http_auth.HEADER_CRYPTO}")
        target = request.scope["raw_path"].decode("latin-1")
        if request.scope["query_string"]:
            target += "?" + request.scope["query_string"].decode("latin-1")
        try:
            return http_auth.verify(request.headers, body, method=request.method, path=target,
                                    self_hotkey_ss58=hotkey, nonce_store=nonces)
        except http_auth.AuthError as e:
            raise _error(401, str(e)) from None

    async def authorized(request: Request) -> Authorized:
        """The auth dependency: body within limits (413), signature (401), then the gate (403/429/503).
        One dependency doing three steps in order, because FastAPI re-solves each dependency on every request."""
        body = await read_body(request)
        caller = verify_signature(request, body)
        try:
            priority = gate.admit(caller.hotkey_ss58)
        except Rejection as r:
            raise _error(r.status, r.message, r.retry_after) from None
        return Authorized(body, caller.hotkey_ss58, priority)

    request_schema = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ImageSynapse.model_json_schema(ref_template="#/components/schemas/{model}")}}}}
    errors = {s: {"description": d} for s, d in [
        (400, "malformed body or image"), (401, "missing or invalid btauth/1 signature"),
        (403, "caller not registered, no validator permit or too little stake"), (413, "body or image too large"),
        (415, "image format not accepted"), (429, "rate limit"), (500, "model error or timeout"),
        (503, "queue full or metagraph not loaded (see Retry-After)")]}

    @app.post(DETECT_PATH, response_model=DetectResponse, responses=errors, openapi_extra=request_schema)
    async def detect(auth: Authorized = Depends(authorized)) -> Response:
        """P(AI-generated) for one image. The body is an `ImageSynapse` JSON object, signed with btauth/1."""
        try:
            synapse = ImageSynapse.model_validate_json(auth.body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise _error(400, f"body is not an ImageSynapse: {where}: {first['msg']}") from None
        try:
            future = batcher.submit(synapse.image, auth.priority)
        except QueueFull as e:
            raise _error(503, str(e), retry_after=1) from None
        try:
            prediction = await asyncio.wait_for(future, timeout)
        except InvalidImage as e:
            raise _error(IMAGE_ERROR_STATUS.get(e.kind, 400), str(e)) from None
        except QueueFull as e:
            raise _error(503, str(e), retry_after=1) from None
        except ModelError as e:
            raise _error(500, str(e)) from None
        except asyncio.TimeoutError:
            raise _error(500, f"inference timed out after {timeout:g}s") from None
        answer = DetectResponse(prediction=prediction.value, detector=detector.name, version=prediction.version)
        return Response(answer.model_dump_json(), media_type="application/json",
                        headers={MODEL_MS_HEADER: f"{prediction.model_ms:.3f}",
                                 BATCH_HEADER: str(prediction.batch_size)})

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        """Liveness: the model is loaded and the server answers. Public information only."""
        return service.health()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        service.metrics.queue_depth.set(batcher.queued())
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.opt(exception=exc).error(f"unexpected error on {request.url.path}")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    return app
