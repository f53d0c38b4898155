"""Hostile and awkward miners against the validator's client, all real HTTP servers on 127.0.0.1 (fake_miners.py).

A redirect is never followed (the server it points at never sees the request) and is an invalid answer; an answer
written in pieces is read whole; an answer over the limit is invalid with the reason; every request carries the
validator's timeout in DEADLINE_HEADER.
"""
import asyncio

import httpx
import pytest
from bittensor.sp_core import Keypair
from loguru import logger

from bitmind_lite.protocol import DETECT_PATH, encode_image
from bitmind_lite.validator.query import MAX_ANSWER_BYTES, MinerClient, Target, challenge_body

from test_validator_query import VALIDATOR_KEY, start_fake_miners, stop

TIMEOUT_S = 2.5


@pytest.fixture(scope="module")
def miners(tmp_path_factory):
    """An honest server that accepts any caller, and the awkward miners, some pointing at that server."""
    tmp = tmp_path_factory.mktemp("hardening")
    honest_proc, honest_info = start_fake_miners(tmp, ["ok:0.9"], "honest", verify=False)
    honest = honest_info[0]
    elsewhere = f"http://127.0.0.1:{honest['port']}{DETECT_PATH}"
    behaviours = [f"redirect307:{elsewhere}", f"redirect302:{elsewhere}", "chunked:0.7", "big", "bigchunked",
                  "deadline"]
    proc, info = start_fake_miners(tmp, behaviours, "awkward")
    try:
        yield {"honest": honest, **{m["behaviour"].split(":")[0]: m for m in info}}
    finally:
        stop(proc)
        stop(honest_proc)


@pytest.fixture(scope="module")
def body(real_photo) -> bytes:
    return challenge_body(encode_image(real_photo.resize((96, 64))))


def query(miner: dict, body: bytes, times: int = 1, uid: int = 7):
    target = Target(uid, miner["hotkey"], "127.0.0.1", miner["port"])

    async def go():
        async with MinerClient(VALIDATOR_KEY, timeout=TIMEOUT_S) as client:
            return [await client.query(target, body) for _ in range(times)]
    return asyncio.run(go())


def received(miner: dict) -> int:
    return httpx.get(f"http://127.0.0.1:{miner['port']}/requests", timeout=5).json()["requests"]


@pytest.mark.parametrize("kind,status", [("redirect307", 307), ("redirect302", 302)])
def test_a_redirect_is_an_invalid_answer_and_is_never_followed(miners, body, kind, status):
    honest = miners["honest"]
    before = received(honest)
    logs = []
    sink = logger.add(lambda m: logs.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    try:
        answers = query(miners[kind], body, times=2)
    finally:
        logger.remove(sink)
    for a in answers:
        assert a.prediction is None and not a.valid and a.status == status
        assert a.error.startswith("redirect (3xx) refused") and str(status) in a.error
    assert received(honest) == before, "the validator followed the redirect"
    about_it = [level for level, text in logs if "redirect" in text and "uid 7" in text]
    assert about_it == ["WARNING", "DEBUG"]  # warned once, then quietly
    # the server it points at does answer: the redirect, not that server, is what made the answer invalid
    (direct,) = query({"hotkey": Keypair.create_from_uri("//anyone").ss58_address, "port": honest["port"]}, body)
    assert direct.prediction == 0.9 and received(honest) == before + 1


def test_an_answer_written_in_two_chunks_is_read_whole(miners, body):
    (a,) = query(miners["chunked"], body)
    assert a.error is None and a.prediction == 0.7 and a.detector == "fake"


@pytest.mark.parametrize("kind", ["big", "bigchunked"])
def test_an_oversized_answer_is_invalid_with_the_reason(miners, body, kind):
    (a,) = query(miners[kind], body)
    assert a.prediction is None and a.status == 200
    assert a.error == f"answer larger than {MAX_ANSWER_BYTES} bytes"


def test_every_request_carries_the_validators_timeout(miners, body):
    (a,) = query(miners["deadline"], body)
    assert a.valid and float(a.detector) == TIMEOUT_S  # the miner echoes the header it received
