"""The miner's HTTP API (FastAPI): POST /v1/detect, GET /health, GET /metrics, GET /stats.

On the public port, /metrics and /stats (loopback callers only) are served unless --neuron.metrics_address moves
them to their own address (service.py), and the API schema and docs (/openapi.json, /docs, /redoc) only with
--neuron.openapi: by default a stranger learns nothing the validators do not need.

A detect request goes: size-limited body read (413) -> btauth/1 signature check (401) -> metagraph gate
(403/429/503) -> parse (400) -> fair, deadline-aware batcher (413/415/400 for bad images, 503 when it cannot be
answered in time or the queue is full, 504 when the deadline passes, 500 on model error) -> `DetectResponse`.
The first three form the `authorized` dependency; the key, the nonce store and the request schema are built once,
when the app is created.

The deadline is the caller's timeout from the `DEADLINE_HEADER` header, capped by --neuron.request_timeout (the
default when the header is absent or not a positive number), counted from the moment the request arrived.
Every refusal is a `Rejection` carrying an `ErrorKind`; one exception handler answers it as
`{"detail": message, "kind": kind}` with the kind's status, and the OpenAPI error table is built from `ErrorKind`.
"""
from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from bittensor import http_auth
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from loguru import logger
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from bitmind_lite import __version__
from bitmind_lite.metrics import CONTENT_TYPE
from bitmind_lite.miner.gate import Rejection
from bitmind_lite.protocol import (DEADLINE_HEADER, DETECT_PATH, MAX_BODY_BYTES, DetectRequest, DetectResponse,
                                   ErrorKind, InvalidImage)

if TYPE_CHECKING:
    from bitmind_lite.miner.service import MinerService

IMAGE_ERROR_KIND = {"size": ErrorKind.too_large, "format": ErrorKind.unsupported}  # any other InvalidImage: malformed
MODEL_MS_HEADER = "X-Model-Ms"  # wall time of the batch that answered: lets clients split latency
BATCH_HEADER = "X-Batch-Size"


class ErrorBody(BaseModel):
    """Every refusal's body."""

    detail: str
    kind: ErrorKind


ERROR_RESPONSES = {kind.status: {"description": kind.description, "model": ErrorBody} for kind in ErrorKind}


@dataclass(frozen=True)
class Authorized:
    """A request that passed the size limit, the signature check and the gate."""

    body: bytes
    hotkey: str
    stake: float  # the caller's weight in the fair queue
    timeout: float  # seconds the caller waits, as capped here
    deadline: float  # event-loop time when the caller gives up


def caller_timeout(header: Optional[str], cap: float) -> float:
    """The caller's timeout from its deadline header, capped by ours; ours when absent or not a positive number."""
    try:
        seconds = float(header)
    except (TypeError, ValueError):
        return cap
    return min(seconds, cap) if seconds > 0 and math.isfinite(seconds) else cap


FORWARDING_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def from_this_machine(request: Request) -> bool:
    """A loopback peer that no proxy forwarded (a reverse proxy on this host makes every client look local)."""
    try:
        local = request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False
    return local and not any(h in request.headers for h in FORWARDING_HEADERS)


def refusal_response(exc: Rejection) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))} if exc.retry_after is not None else None
    return JSONResponse({"detail": exc.message, "kind": exc.kind.value}, status_code=exc.status, headers=headers)


class DetectMetrics:
    """Pure ASGI middleware: status and latency of every detect request, whichever layer answered it, and one
    DEBUG log line for each."""

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
            seconds = time.perf_counter() - start
            state = scope.get("state") or {}
            self.metrics.observe_request(status, seconds, state.get("caller"))
            logger.debug(f"detect {status} in {seconds * 1000:.1f} ms for {state.get('caller', 'unauthenticated')}"
                         f"{state.get('outcome', '')}")


class Health(BaseModel):
    status: str
    hotkey: str
    detector: str
    version: str
    uid: Optional[int]
    block: Optional[int]


def create_app(service: "MinerService") -> FastAPI:
    hotkey = service.hotkey_ss58
    nonces = service.nonces
    gate, batcher, detector = service.gate, service.batcher, service.detector
    neuron = service.cfg.neuron
    timeout = neuron.request_timeout

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    # Without the schema FastAPI serves neither /docs nor /redoc (both render it).
    app = FastAPI(title="bitmind-lite miner", version=__version__, lifespan=lifespan,
                  description="Answers signed image challenges with P(AI-generated).",
                  openapi_url="/openapi.json" if neuron.openapi else None)
    app.add_middleware(DetectMetrics, metrics=service.metrics)

    async def read_body(request: Request) -> bytes:
        """The body, refused with 413 as soon as it is known to be too large (header or running count)."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise Rejection("Content-Length is not a number", ErrorKind.malformed)
            if int(declared) > MAX_BODY_BYTES:
                raise Rejection(f"request body is {declared} bytes; the limit is {MAX_BODY_BYTES}",
                                ErrorKind.too_large)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise Rejection(f"request body is larger than the {MAX_BODY_BYTES} byte limit",
                                    ErrorKind.too_large)
                chunks.append(chunk)
        except ClientDisconnect:  # a normal event on a public port: one line, no traceback
            peer = f"{request.client.host}:{request.client.port}" if request.client else "a client"
            logger.warning(f"{peer} disconnected after {size} of {declared or 'unknown'} body bytes; dropped")
            raise Rejection("client disconnected before sending the whole body", ErrorKind.malformed) from None
        return b"".join(chunks)

    def verify_signature(request: Request, body: bytes) -> http_auth.Caller:
        """btauth/1 over the raw body and the path exactly as sent, bound to this miner's hotkey."""
        if http_auth.HEADER_CRYPTO in request.headers:  # hotkeys are sr25519: refuse any other declared scheme
            raise Rejection(f"only sr25519 signatures are accepted; drop {http_auth.HEADER_CRYPTO}",
                            ErrorKind.unauthorized)
        target = request.scope["raw_path"].decode("latin-1")
        if request.scope["query_string"]:
            target += "?" + request.scope["query_string"].decode("latin-1")
        try:
            return http_auth.verify(request.headers, body, method=request.method, path=target,
                                    self_hotkey_ss58=hotkey, nonce_store=nonces)
        except http_auth.AuthError as e:
            raise Rejection(str(e), ErrorKind.unauthorized) from None

    async def authorized(request: Request) -> Authorized:
        """The auth dependency: body within limits (413), signature (401), then the gate (403/429/503).
        One dependency doing three steps in order, because FastAPI re-solves each dependency on every request.
        The deadline starts first: the caller's clock runs while its body is read."""
        seconds = caller_timeout(request.headers.get(DEADLINE_HEADER), timeout)
        deadline = asyncio.get_running_loop().time() + seconds
        body = await read_body(request)
        caller = verify_signature(request, body)
        request.state.caller = caller.hotkey_ss58  # for the request's log line
        stake = gate.admit(caller.hotkey_ss58)
        return Authorized(body, caller.hotkey_ss58, stake, seconds, deadline)

    request_schema = {"requestBody": {"required": True, "content": {
        "application/json": {"schema": DetectRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}}

    @app.post(DETECT_PATH, response_model=DetectResponse, responses=ERROR_RESPONSES, openapi_extra=request_schema)
    async def detect(request: Request, auth: Authorized = Depends(authorized)) -> Response:
        """P(AI-generated) for one image. The body is a `DetectRequest` JSON object, signed with btauth/1; the
        caller's timeout in seconds may be sent in the `X-Bitmind-Timeout` header."""
        try:
            request_body = DetectRequest.model_validate_json(auth.body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise Rejection(f"body is not a DetectRequest: {where}: {first['msg']}", ErrorKind.malformed) from None
        future = batcher.submit(request_body.image, auth.stake, auth.hotkey, auth.deadline)
        try:
            prediction = await asyncio.wait_for(future, auth.deadline - asyncio.get_running_loop().time())
        except InvalidImage as e:
            raise Rejection(str(e), IMAGE_ERROR_KIND.get(e.kind, ErrorKind.malformed)) from None
        except asyncio.TimeoutError:
            raise Rejection(f"inference timed out after {auth.timeout:g}s", ErrorKind.timeout) from None
        request.state.outcome = (f": {prediction.value:.4f} (batch of {prediction.batch_size}, "
                                 f"{prediction.model_ms:.0f} ms model)")
        answer = DetectResponse(prediction=prediction.value, detector=detector.name, version=prediction.version,
                                attribution_detail=prediction.attribution)
        return Response(answer.model_dump_json(), media_type="application/json",
                        headers={MODEL_MS_HEADER: f"{prediction.model_ms:.3f}",
                                 BATCH_HEADER: str(prediction.batch_size)})

    @app.get("/health", response_model=Health)
    async def health() -> dict:
        """Liveness: the model is loaded and the server answers. Public information only."""
        return service.health()

    if not neuron.metrics_address:
        @app.get("/metrics", response_class=PlainTextResponse)
        async def metrics() -> Response:
            """Prometheus text exposition of this miner's registry."""
            return Response(service.metrics.render(), media_type=CONTENT_TYPE)

        @app.get("/stats", include_in_schema=False)
        async def stats(request: Request) -> dict:
            """This miner's standing and its last hour per validator, for `bitmind-lite miner stats`. With no
            operator address (--neuron.metrics_address) it is answered on this public port to loopback callers
            only: who queries this miner, how often and how fast is the operator's business, not a stranger's."""
            if not from_this_machine(request):
                raise Rejection("/stats answers loopback callers only (or set --neuron.metrics_address)",
                                ErrorKind.forbidden)
            return await service.stats()

    @app.exception_handler(Rejection)
    async def refused(request: Request, exc: Rejection) -> JSONResponse:
        """The one mapping from a refusal to its answer (no traceback: refusing is normal work)."""
        request.state.outcome = f": {exc.kind.value}: {exc.message}"
        return refusal_response(exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.opt(exception=exc).error(f"unexpected error on {request.url.path}")
        return refusal_response(Rejection(f"internal error: {type(exc).__name__}", ErrorKind.model_error))

    return app
