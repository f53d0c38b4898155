"""The miner over real HTTP on 127.0.0.1, one miner process (npr on 64 px crops, random weights) on a devnet:
signed requests, authentication (401), gatekeeping (403/429), limits (413/415/400), error kinds, a client that
disconnects mid-body, batching and hot reload.
"""
import asyncio
import base64
import io
import os
import socket
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from bitmind_lite.protocol import DETECT_PATH, MAX_BODY_BYTES, ErrorKind, encode_image
from miner_support import (ED25519, MIN_STAKE, RATE_LIMIT, SIZE, body_of, expected, keypair, log_text, metric, post,
                           sample_image, save_weights, sign, start_miner, stop, subnet, wait_for)  # noqa: F401


@pytest.fixture(scope="module")
def miner(subnet):
    weights = subnet.root / "npr.pth"
    version = save_weights(weights, seed=0)
    node = start_miner(subnet, "miner", "--neuron.detector", "npr", "--neuron.input_size", str(SIZE),
                       "--neuron.weights", str(weights), "--neuron.watch_interval", "0.2",
                       "--neuron.max_wait_ms", "25", "--blacklist.min_stake", str(MIN_STAKE),
                       "--blacklist.rate_limit", str(RATE_LIMIT), "--neuron.openapi")  # off by default
    node.weights, node.version = weights, version
    yield node
    stop(node)


# ---------------------------------------------------------------- the happy path
def test_signed_registered_validator_gets_a_prediction(miner):
    image = sample_image(1)
    r = post(miner, keypair("Alice"), body_of(image))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"prediction", "detector", "version"}  # never the image back
    assert 0.0 <= answer["prediction"] <= 1.0
    assert answer["prediction"] == pytest.approx(expected(miner.weights, [image])[0], abs=1e-5)
    assert answer["detector"] == "npr" and answer["version"] == miner.version
    assert len(r.content) < 200 and float(r.headers["X-Model-Ms"]) > 0


def test_health_metrics_and_openapi(miner, subnet):
    health = httpx.get(miner.url + "/health").json()
    assert health == {"status": "ok", "hotkey": subnet.hotkey, "detector": "npr", "version": miner.version,
                      "uid": subnet.uid, "block": health["block"]}
    text = httpx.get(miner.url + "/metrics").text
    assert metric(miner, "bitmind_miner_model_load_seconds") > 0
    assert "bitmind_miner_request_seconds_bucket" in text and "bitmind_miner_batch_size_bucket" in text
    assert f'bitmind_miner_detector_info{{detector="npr",version="{miner.version}"}} 1.0' in text
    spec = httpx.get(miner.url + "/openapi.json").json()["paths"][DETECT_PATH]["post"]
    assert spec["requestBody"]["content"]["application/json"]["schema"]["title"] == "DetectRequest"
    assert {"401", "403", "413", "429"} <= set(spec["responses"])
    for kind in ErrorKind:  # the error table is ErrorKind's, so it cannot drift from what the handler answers
        assert spec["responses"][str(kind.status)]["description"] == kind.description


# ---------------------------------------------------------------- authentication: 401
def _unsigned(receiver, body):
    return {}, body


def _tampered(receiver, body):
    return sign(keypair("Alice"), body, receiver), body.replace(b'"image"', b' "image"')


def _stale(receiver, body):
    return sign(keypair("Alice"), body, receiver, nonce_ns=time.time_ns() - 11 * 10**9), body


def _wrong_receiver(receiver, body):
    return sign(keypair("Alice"), body, keypair("Bob").ss58_address), body


def _other_path(receiver, body):
    return sign(keypair("Alice"), body, receiver, path=DETECT_PATH + "?batch=1"), body


def _ed25519(receiver, body):
    return sign(ED25519, body, receiver), body


@pytest.mark.parametrize("make, message", [
    (_unsigned, "missing or unsupported X-Bittensor-Version"),
    (_tampered, "signature does not verify"),
    (_stale, "older than the 10s freshness window"),
    (_wrong_receiver, "signed for a different receiving hotkey"),
    (_other_path, "signature does not verify"),
    (_ed25519, "only sr25519 signatures are accepted"),
])
def test_bad_authentication_gets_401(miner, make, message):
    headers, body = make(miner.hotkey, body_of(sample_image(2)))
    r = httpx.post(miner.url + DETECT_PATH, content=body, headers=headers)
    assert r.status_code == 401 and message in r.json()["detail"], r.text


def test_replayed_request_gets_401(miner):
    body = body_of(sample_image(3))
    headers = sign(keypair("Alice"), body, miner.hotkey)
    first = httpx.post(miner.url + DETECT_PATH, content=body, headers=headers, timeout=60)
    again = httpx.post(miner.url + DETECT_PATH, content=body, headers=headers, timeout=60)
    assert first.status_code == 200 and again.status_code == 401
    assert "already accepted" in again.json()["detail"]


# ---------------------------------------------------------------- gatekeeping: 403 and 429
@pytest.mark.parametrize("name, message", [
    ("Bob", "is not registered on subnet 1"),
    ("Charlie", "has no validator permit"),
    ("Dave", f"below the minimum {MIN_STAKE}"),
])
def test_gate_refuses_with_403(miner, name, message):
    r = post(miner, keypair(name), body_of(sample_image(4)))
    assert r.status_code == 403 and message in r.json()["detail"], r.text


def test_flooding_caller_gets_429_with_retry_after(miner):
    statuses, last = [], None
    with httpx.Client() as client:
        for _ in range(RATE_LIMIT + 5):  # a cheap body: the gate runs before parsing, so each one counts
            last = client.post(miner.url + DETECT_PATH, content=b"{", headers=sign(keypair("Eve"), b"{", miner.hotkey))
            statuses.append(last.status_code)
    assert statuses[:RATE_LIMIT] == [400] * RATE_LIMIT
    assert statuses[-3:] == [429] * 3 and int(last.headers["Retry-After"]) >= 1
    assert f"at most {RATE_LIMIT} requests per minute" in last.json()["detail"]
    assert post(miner, keypair("Alice"), b"{").status_code == 400  # other callers are unaffected


# ---------------------------------------------------------------- limits: 413, 415, 400
def raw_http(port: int, head: str, chunks=()) -> tuple[int, str]:
    """One request over a bare socket (so the body can be cut short or streamed); returns (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode())
        for chunk in chunks:
            s.sendall(chunk)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        header, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in header.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += s.recv(65536)
    return int(header.split()[1]), rest.decode()


def test_oversized_body_gets_413_before_it_is_read(miner):
    head = (f"POST {DETECT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n")
    status, text = raw_http(miner.port, head, [b"{" * 1024])  # 1 KiB sent: the declared length alone is refused
    assert status == 413 and f"the limit is {MAX_BODY_BYTES}" in text
    mib = b"a" * (1 << 20)
    chunked = [b"%x\r\n%s\r\n" % (len(mib), mib)] * (MAX_BODY_BYTES >> 20) + [b"1\r\na\r\n"]
    head = f"POST {DETECT_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, text = raw_http(miner.port, head, chunked)  # no length given: counted while streaming
    assert status == 413 and "larger than" in text


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: a decompression bomb as far as any decoder can tell."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gif() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buf, format="GIF")
    return b64(buf.getvalue())


@pytest.mark.parametrize("body, status, message", [
    (b"not json", 400, "body is not a DetectRequest"),
    (b'{"image": "aGk=", "secret": 1}', 400, "secret: Extra inputs are not permitted"),
    (body_of("@@@ not base64 @@@"), 400, "not valid base64"),
    (body_of(b64(b"hello, I am text")), 415, "not a JPEG, PNG or WebP"),
    (body_of(gif()), 415, "GIF is not one of JPEG, PNG, WEBP"),
    (body_of(b64(png_claiming(30000, 30000))), 413, "decompression bomb"),
    (body_of(b64(png_claiming(5000, 4000))), 413, "pixels are accepted"),
    (body_of(encode_image(np.zeros((16, 16, 3), np.uint8))), 400, "at least 32 pixels"),
    (body_of(sample_image(5)[:400]), 400, "corrupt or truncated"),
], ids=["not-json", "extra-field", "bad-base64", "text", "gif", "bomb", "too-many-pixels", "tiny", "truncated"])
def test_bad_bodies_get_a_clear_status(miner, body, status, message):
    r = post(miner, keypair("Alice"), body)
    assert r.status_code == status and message in r.json()["detail"], r.text


@pytest.mark.parametrize("name, body, kind", [
    ("unsigned", body_of(sample_image(6)), ErrorKind.unauthorized),
    ("Bob", body_of(sample_image(6)), ErrorKind.forbidden),
    ("Alice", b"not json", ErrorKind.malformed),
    ("Alice", body_of(b64(b"hello, I am text")), ErrorKind.unsupported),
    ("Alice", body_of(b64(png_claiming(30000, 30000))), ErrorKind.too_large),
])
def test_refusals_carry_their_kind_and_its_status(miner, name, body, kind):
    if name == "unsigned":
        r = httpx.post(miner.url + DETECT_PATH, content=body)
    else:
        r = post(miner, keypair(name), body)
    assert r.status_code == kind.status, r.text
    assert set(r.json()) == {"detail", "kind"} and r.json()["kind"] == kind.value and r.json()["detail"]


def test_client_that_disconnects_mid_body_is_one_warning_line(miner):
    seen = len(miner.log.read_text())
    head = f"POST {DETECT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", miner.port), timeout=30) as s:
        s.sendall(head.encode() + b"{" * 100)  # 100 of the 5000 bytes promised, then gone
    wait_for(lambda: "disconnected after 100 of 5000 body bytes" in miner.log.read_text()[seen:], 30,
             "the disconnect to be logged", log=miner.log)
    time.sleep(0.5)  # anything else the disconnect writes (a traceback, say) would be there by now
    new = [line for line in miner.log.read_text()[seen:].splitlines() if line.strip()]
    assert len(new) == 1 and "WARNING" in new[0], "\n".join(new[:40])
    assert post(miner, keypair("Alice"), body_of(sample_image(8))).status_code == 200  # and the miner serves on


# ---------------------------------------------------------------- batching
def test_concurrent_callers_are_batched_and_each_gets_its_own_answer(miner):
    images = [sample_image(100 + i) for i in range(8)]
    want = expected(miner.weights, images)
    assert min(abs(a - b) for i, a in enumerate(want) for b in want[i + 1:]) > 1e-4  # answers are tellable apart
    batches_before = metric(miner, "bitmind_miner_batch_size_count")
    images_before = metric(miner, "bitmind_miner_batch_size_sum")

    async def call_all():
        async with httpx.AsyncClient(timeout=60) as client:
            requests = []
            for i, image in enumerate(images):
                body = body_of(image)
                requests.append(client.post(miner.url + DETECT_PATH, content=body,
                                            headers=sign(keypair(f"V{i}"), body, miner.hotkey)))
            return await asyncio.gather(*requests)

    responses = asyncio.run(call_all())
    assert [r.status_code for r in responses] == [200] * 8
    assert [r.json()["prediction"] for r in responses] == pytest.approx(want, abs=1e-5)
    batches = metric(miner, "bitmind_miner_batch_size_count") - batches_before
    assert metric(miner, "bitmind_miner_batch_size_sum") - images_before == 8
    assert batches < 8 and max(int(r.headers["X-Batch-Size"]) for r in responses) > 1


# ---------------------------------------------------------------- hot reload
def test_hot_reload_swaps_weights_and_rejects_a_corrupt_file(miner):
    image = sample_image(7)
    new_version = save_weights(miner.weights, seed=1)
    wait_for(lambda: httpx.get(miner.url + "/health").json()["version"] == new_version, 30, "the hot swap",
             log=miner.log)
    r = post(miner, keypair("Ferdie"), body_of(image))
    assert r.json()["version"] == new_version
    assert r.json()["prediction"] == pytest.approx(expected(miner.weights, [image])[0], abs=1e-5)
    good = miner.weights.read_bytes()
    tmp = miner.weights.with_name("partial.tmp")
    tmp.write_bytes(good[: len(good) // 2])  # a half-copied checkpoint
    os.replace(tmp, miner.weights)
    rejected = 'bitmind_miner_weight_reloads_total{result="rejected"}'
    wait_for(lambda: metric(miner, rejected) == 1, 30, "the rejection", log=miner.log)
    assert httpx.get(miner.url + "/health").json()["version"] == new_version  # the old model keeps serving
    r = post(miner, keypair("Ferdie"), body_of(image))
    assert r.status_code == 200 and r.json()["version"] == new_version
    assert "rejected, still serving npr/" + new_version in log_text(miner.log)


