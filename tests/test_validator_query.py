"""The fan-out against real HTTP processes on 127.0.0.1: faulty miners cost only their own answer."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bittensor.sp_core import Keypair

from bitmind_lite.protocol import encode_image, parse_detect_answer
from bitmind_lite.validator.query import MinerClient, Target, challenge_body

FAKE_MINERS = Path(__file__).with_name("fake_miners.py")
VALIDATOR_KEY = Keypair.create_from_uri("//test-validator")


def start_fake_miners(tmp_path: Path, behaviours: list[str], prefix: str,
                      verify: bool = True) -> tuple[subprocess.Popen, list[dict]]:
    ready = tmp_path / f"{prefix}.json"
    proc = subprocess.Popen([sys.executable, str(FAKE_MINERS), "--ready", str(ready), "--seed-prefix", prefix,
                             *([] if verify else ["--no-verify"]), *behaviours], start_new_session=True)
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "fake miners did not start"
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


@pytest.fixture
def body(real_photo) -> bytes:
    return challenge_body(encode_image(real_photo.resize((128, 96))))


def test_faulty_miners_get_no_valid_answer_and_the_round_completes(tmp_path, body):
    behaviours = ["ok:0.8", "sleep:30", "nan", "neg", "two", "abc", "empty", "500", "dropfirst:0.3", "ok:0"]
    proc, info = start_fake_miners(tmp_path, behaviours, "faults")
    dying, dying_info = start_fake_miners(tmp_path, ["die"], "dying")          # exits when the request arrives
    killed, killed_info = start_fake_miners(tmp_path, ["sleep:30"], "killed")  # SIGKILLed while answering
    try:
        infos = info + dying_info + killed_info
        targets = [Target(uid, m["hotkey"], "127.0.0.1", m["port"]) for uid, m in enumerate(infos)]
        targets.append(Target(len(targets), Keypair.create_from_uri("//nobody").ss58_address, "127.0.0.1",
                              info[0]["port"]))  # signed for the wrong receiver: the miner answers 401

        async def round_():
            async with MinerClient(VALIDATOR_KEY, timeout=2.0) as client:
                async def kill_soon():
                    await asyncio.sleep(0.5)
                    os.killpg(killed.pid, signal.SIGKILL)
                killer = asyncio.create_task(kill_soon())
                start = time.perf_counter()
                answers = await client.query_all(targets, body)
                await killer
                return answers, time.perf_counter() - start

        answers, wall = asyncio.run(round_())
    finally:
        for p in (proc, dying, killed):
            stop(p)
    by_behaviour = {t: a for t, a in zip(behaviours + ["die", "killed", "wrong-receiver"], answers)}
    assert wall < 2.0 + 1.0, "the round must end within the timeout"
    assert by_behaviour["ok:0.8"].prediction == 0.8 and by_behaviour["ok:0"].prediction == 0.0
    assert by_behaviour["dropfirst:0.3"].prediction == 0.3  # retried once on the dropped connection, re-signed
    for name in ("sleep:30", "nan", "neg", "two", "abc", "empty", "500", "die", "killed", "wrong-receiver"):
        a = by_behaviour[name]
        assert a.prediction is None and not a.valid and a.error, name
    assert "timed out" in by_behaviour["sleep:30"].error
    assert by_behaviour["500"].status == 500 and by_behaviour["wrong-receiver"].status == 401
    assert by_behaviour["empty"].error == "empty answer"
    assert [a.uid for a in answers] == [t.uid for t in targets]


ANSWER = b'"detector": "npr", "version": "1"'


@pytest.mark.parametrize("status,raw,expected", [
    (200, b'{"prediction": 0.25, ' + ANSWER + b'}', 0.25),
    (200, b'{"prediction": 1, ' + ANSWER + b'}', 1.0),
    (200, b'{"prediction": 0.5, ' + ANSWER + b', "attribution": "sdxl", "newer_field": [1]}', 0.5),
    (200, b'{"prediction": NaN, ' + ANSWER + b'}', None),
    (200, b'{"prediction": Infinity, ' + ANSWER + b'}', None),
    (200, b'{"prediction": true, ' + ANSWER + b'}', None),
    (200, b'{"prediction": "0.5", ' + ANSWER + b'}', None),
    (200, b'{"prediction": null, ' + ANSWER + b'}', None),
    (200, b'{"prediction": 0.5}', 0.5),  # detector and version are informative: a bare prediction is an answer
    (200, b'{"prediction": 0.5, ' + ANSWER + b', "attribution": "' + b"x" * 129 + b'"}', None),
    (200, b'[0.5]', None),
    (200, b'\xff\xfe', None),
    (200, b'{"prediction": 0.5, ' + ANSWER, None),  # cut short
    (503, b'{"detail": "busy"}', None),
    (307, b'{"prediction": 0.5, ' + ANSWER + b'}', None),
])
def test_parse_detect_answer(status, raw, expected):
    p, _detector, error = parse_detect_answer(status, raw)
    assert p == expected and (error is None) == (expected is not None)


@pytest.mark.parametrize("status,raw,reason", [
    (200, b'{"prediction": 2, ' + ANSWER + b'}', "prediction '2' is not a finite number in [0, 1]"),
    (200, b'{"prediction": 0.5, ' + ANSWER, "answer is not JSON"),
    (200, b"", "empty answer"),
    (200, b'{"version": "1"}', "answer has no prediction"),
    (503, b'{"detail": "queue full"}', "HTTP 503: queue full"),
    (302, b"", "redirect (3xx) refused: HTTP 302"),
])
def test_invalid_answers_say_why(status, raw, reason):
    assert parse_detect_answer(status, raw) == (None, None, reason)
