"""Tiny fake miners for validator tests and bench/validator.py: many signed /v1/detect endpoints in one process.

    python tests/fake_miners.py --ready OUT.json ok:0.9 random nan neg two abc empty 500 sleep:30 die ...

Each argument is one miner on its own 127.0.0.1 port with its own hotkey (//fake-miner-<i>, or --seed-prefix).
Requests are verified with bittensor.http_auth like a real miner (401 when the signature is wrong). When every
port listens, OUT.json gets [{"port", "hotkey", "behaviour"}, ...]. Behaviours:
ok:P answer P | random answer U(0,1) | nan, neg, two, abc answer NaN, -1, 2, "abc" | empty: 200 with no body |
500: HTTP 500 | sleep:S sleep S seconds, then answer 0.5 | die: the process exits (os._exit) on the first request |
dropfirst:P closes the connection without answering the first request, then answers P (a stale keep-alive) |
redirect307:URL, redirect302:URL answer that redirect to URL | chunked:P answers P in two chunked writes 0.3 s
apart | big, bigchunked answer a valid 0.5 padded past the validator's answer limit (with a Content-Length, or
chunked without one) | deadline answers 0.5 with the request's DEADLINE_HEADER as its detector name (or "none").
Valid answers are built with protocol.DetectResponse. GET /requests on any port says how many requests (any
method, any path) that port has received.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from pathlib import Path

import bittensor as bt
from aiohttp import web
from bittensor.sp_core import Keypair

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout
from bitmind_lite.protocol import DEADLINE_HEADER, DETECT_PATH, DetectResponse  # noqa: E402

CHUNK_PAUSE_S = 0.3  # between the two writes of a chunked answer: long enough that they arrive apart
BIG_ANSWER_BYTES = 100 * 1024  # more than the validator reads (query.MAX_ANSWER_BYTES)


def answer(prediction: float, detector: str = "fake") -> web.Response:
    body = DetectResponse(prediction=prediction, detector=detector, version="0").model_dump_json()
    return web.json_response(text=body)


def fake_hotkey(prefix: str, i: int) -> Keypair:
    return Keypair.create_from_uri(f"//{prefix}-{i}")


async def write_chunked(request: web.Request, data: bytes, pieces: int, pause: float) -> web.StreamResponse:
    """Send `data` with chunked transfer encoding in `pieces` writes, `pause` seconds apart."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    step = -(-len(data) // pieces)
    for i in range(0, len(data), step):
        if i:
            await asyncio.sleep(pause)
        await resp.write(data[i:i + step])
    await resp.write_eof()
    return resp


def make_app(behaviour: str, hotkey: str, verify: bool) -> web.Application:
    nonces = bt.http_auth.InMemoryNonceStore()
    seen = {"requests": 0, "received": 0}

    @web.middleware
    async def count(request: web.Request, handler):
        if request.path != "/requests":
            seen["received"] += 1
        return await handler(request)

    async def requests(request: web.Request) -> web.Response:
        return web.json_response({"requests": seen["received"]})

    async def detect(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if verify:
            try:
                bt.http_auth.verify(request.headers, body, method="POST", path=request.raw_path,
                                    self_hotkey_ss58=hotkey, nonce_store=nonces)
            except bt.http_auth.AuthError as e:
                return web.json_response({"detail": str(e)}, status=401)
        kind, _, arg = behaviour.partition(":")
        seen["requests"] += 1
        if kind == "dropfirst":
            if seen["requests"] == 1:
                request.transport.close()
                raise asyncio.CancelledError  # no response at all: the client sees the connection drop
            kind = "ok"
        if kind == "ok":
            return answer(float(arg))
        if kind == "random":
            return answer(random.random())
        if kind in ("nan", "neg", "two", "abc"):
            value = {"nan": "NaN", "neg": "-1", "two": "2", "abc": '"abc"'}[kind]
            return web.Response(text='{"prediction": %s, "detector": "fake", "version": "0"}' % value,
                                content_type="application/json")
        if kind == "empty":
            return web.Response(status=200)
        if kind == "500":
            return web.json_response({"detail": "internal error"}, status=500)
        if kind == "sleep":
            await asyncio.sleep(float(arg))
            return answer(0.5)
        if kind == "die":
            os._exit(1)
        if kind in ("redirect307", "redirect302"):
            raise (web.HTTPTemporaryRedirect if kind == "redirect307" else web.HTTPFound)(arg)
        if kind == "chunked":
            return await write_chunked(request, answer(float(arg)).body, pieces=2, pause=CHUNK_PAUSE_S)
        if kind in ("big", "bigchunked"):
            padded = json.dumps({**json.loads(answer(0.5).body), "padding": "x" * BIG_ANSWER_BYTES}).encode()
            if kind == "big":  # with a Content-Length
                return web.Response(body=padded, content_type="application/json")
            return await write_chunked(request, padded, pieces=16, pause=0.0)  # no length: only reading tells
        if kind == "deadline":
            return answer(0.5, detector=request.headers.get(DEADLINE_HEADER, "none"))
        return web.json_response({"detail": f"unknown behaviour {behaviour}"}, status=500)

    app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[count])
    app.router.add_post(DETECT_PATH, detect)
    app.router.add_get("/requests", requests)
    return app


async def serve(behaviours: list[str], ready: str, seed_prefix: str, verify: bool) -> None:
    runners, info = [], []
    for i, behaviour in enumerate(behaviours):
        hotkey = fake_hotkey(seed_prefix, i).ss58_address
        runner = web.AppRunner(make_app(behaviour, hotkey, verify), access_log=None, keepalive_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        runners.append(runner)
        info.append({"port": port, "hotkey": hotkey, "behaviour": behaviour})
    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, ready)
    await asyncio.Event().wait()  # until killed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("behaviours", nargs="+")
    parser.add_argument("--ready", required=True, help="write the port/hotkey list here once listening")
    parser.add_argument("--seed-prefix", default="fake-miner")
    parser.add_argument("--no-verify", action="store_true", help="skip signature checks")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.behaviours, args.ready, args.seed_prefix, not args.no_verify))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
