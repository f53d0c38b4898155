"""The validator dashboard's JSON endpoints against a state folder written by the validator itself (a devnet, fake
miners, real rounds), the folder left untouched, and clear errors for a missing or corrupt state."""
import asyncio
import hashlib
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from loguru import logger
from PIL import Image

from bitmind_lite.localnet import free_port
from bitmind_lite.validator.dashboard import ChallengeTail, StateView, challenge_image, main, make_app
from bitmind_lite.validator.run import LOG_FILE, STATE_FILE
from bitmind_lite.validator.weights import normalize_scores

sys.path.insert(0, str(Path(__file__).parent))
from test_validator_loop import Net, challenges  # noqa: E402

ROUNDS = 8
BEHAVIOURS = ["ok:0.9", "random", "nan", "500"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A validator's state folder after ROUNDS rounds, with the images it sent and its own reports."""
    tmp = tmp_path_factory.mktemp("dash")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp / "symbols.json"))
        net = Net(tmp, BEHAVIOURS)
        try:
            v = net.validator(fake="procedural")
            sent, sample = {}, v.sampler.sample

            def recording(rng):
                image, label, meta = sample(rng)
                sent[v.state.step] = image  # the step this round is recorded under
                return image, label, meta

            v.sampler.sample = recording
            reports = challenges(v, ROUNDS)
            v.close()
        finally:
            net.close()
    return SimpleNamespace(dir=Path(v.cfg.neuron.state_dir), state=v.state, reports=reports, sent=sent,
                           uids=net.uids, validator_hotkey=net.vali.hotkey.ss58_address)


def fetch(state_dir, *paths):
    """{path: (status, JSON body or bytes)} from the dashboard app of `state_dir`."""
    async def go():
        async with TestClient(TestServer(make_app(StateView(state_dir)))) as client:
            out = {}
            for p in paths:
                r = await client.get(p)
                out[p] = (r.status, await (r.read() if p.endswith(".png") else r.json()))
            return out
    return asyncio.run(go())


def folder(path: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_the_endpoints_say_what_the_state_folder_holds_and_never_write_to_it(run):
    before = folder(run.dir)
    api = {k.split("/api/")[1].split("?")[0]: body for k, (status, body) in fetch(
        run.dir, "/api/leaderboard", "/api/history", "/api/families", "/api/latency", "/api/challenges?limit=5",
        "/api/chain").items() if status == 200}
    assert len(api) == 6, api
    assert folder(run.dir) == before  # no -wal/-shm, no copy, not a byte changed
    records = [json.loads(line) for line in (run.dir / LOG_FILE).read_text().splitlines()]

    rows = {r["uid"]: r for r in api["leaderboard"]}
    assert set(rows) == set(run.state.miners)
    weights = normalize_scores(run.state.scores())
    last_set = next(r["weights"]["weights"] for r in reversed(records) if r.get("weights", {}).get("set"))
    for uid, m in run.state.miners.items():
        row = rows[uid]
        assert row["hotkey"] == m.hotkey and row["score"] == pytest.approx(m.score, abs=1e-6)
        assert row["weight"] == pytest.approx(weights.get(uid, 0.0), abs=1e-6)
        assert row["weight_set"] == last_set.get(str(uid))
        assert (row["answers"], row["valid"]) == (len(m.history), len(m.history.valid()))
    honest, noisy, nan, err = run.uids
    assert rows[honest]["valid"] == rows[noisy]["valid"] == ROUNDS and rows[nan]["valid"] == rows[err]["valid"] == 0
    assert [r["score"] for r in api["leaderboard"]] == sorted((r["score"] for r in api["leaderboard"]), reverse=True)

    assert {int(u) for u in api["history"]["score"]} == set(run.uids)
    for uid in run.uids:  # one point per round answered, ending at the score the state holds
        series = api["history"]["score"][str(uid)]
        assert len(series) == ROUNDS and series[-1][1] == pytest.approx(run.state.miners[uid].score, abs=1e-6)
    set_rounds = [r for r in run.reports if r.weights is not None and r.weights.set]
    assert set_rounds and all(len(s) == len(set_rounds) for s in api["history"]["weight"].values())

    groups = api["families"]["groups"]
    assert sum(g["challenges"] for g in groups) == ROUNDS
    expected = Counter(f"real:{r.meta['source']}" if r.label == 0 else r.meta["family"] for r in run.reports)
    assert {g["group"]: g["challenges"] for g in groups} == expected
    for g in groups:  # per miner, the rounds of this group that it got right (from the validator's own reports)
        for uid in (honest, noisy):
            rounds = [r for r in run.reports if (f"real:{r.meta['source']}" if r.label == 0 else r.meta["family"])
                      == g["group"]]
            right = sum((next(a for a in r.answers if a.uid == uid).prediction > 0.5) == bool(r.label) for r in rounds)
            assert g["per_miner"][str(uid)] == {"answers": len(rounds), "correct": right,
                                                "accuracy": round(right / len(rounds), 4)}

    reasons = {e["reason"]: e for e in api["latency"]["invalid"]}
    assert reasons["HTTP 500"]["uids"] == {str(err): ROUNDS}
    assert [e["uids"] for e in reasons.values() if "finite number" in e["reason"]] == [{str(nan): ROUNDS}]
    assert {m["uid"] for m in api["latency"]["miners"]} == set(run.uids)
    assert all(0 < m["p50"] <= m["p95"] <= m["max"] for m in api["latency"]["miners"])

    assert [c["step"] for c in api["challenges"]] == [ROUNDS - 1 - i for i in range(5)]
    assert api["chain"]["step"] == run.state.step == ROUNDS
    assert api["chain"]["last_weights_block"] == run.state.last_weights_block is not None
    assert api["chain"]["owner"] == f"netuid 1 / {run.validator_hotkey}" and api["chain"]["chain_up"] is True


def test_a_real_challenge_is_rebuilt_exactly_and_a_fake_shows_its_source_window(run):
    records = {r["step"]: r for r in map(json.loads, (run.dir / LOG_FILE).read_text().splitlines())}
    labels = {step: records[step]["label"] for step in run.sent}
    assert set(labels.values()) == {0, 1}, "the seeded rounds hold both classes"
    for step, image in run.sent.items():
        rebuilt = challenge_image(records[step])
        if labels[step] == 0:
            assert np.array_equal(np.asarray(rebuilt), np.asarray(image)), f"challenge {step} was not rebuilt as sent"
        else:
            x0, y0, x1, y1 = records[step]["meta"]["window"]
            assert rebuilt.size == (x1 - x0, y1 - y0)  # the photo window the generator was given
    status, png = fetch(run.dir, f"/api/challenges/{min(run.sent)}.png")[f"/api/challenges/{min(run.sent)}.png"]
    assert status == 200 and max(Image.open(io.BytesIO(png)).size) == 160


def test_the_log_is_read_on_from_where_it_stopped_and_a_torn_line_is_skipped(run, tmp_path):
    lines = (run.dir / LOG_FILE).read_bytes().splitlines(keepends=True)
    log = tmp_path / LOG_FILE
    log.write_bytes(b"".join(lines[:3]))
    tail = ChallengeTail(log, keep=5)
    tail.refresh()
    assert [r["step"] for r in tail.records] == [0, 1, 2]
    with open(log, "ab") as f:
        f.write(lines[3][:20])  # a line still being written
    tail.refresh()
    assert len(tail.records) == 3 and tail.skipped == 0
    with open(log, "ab") as f:
        f.write(lines[3][20:] + lines[4][:30] + b"\n" + b"".join(lines[5:]))  # the rest, then a torn line (kill -9)
    tail.refresh()
    assert [r["step"] for r in tail.records] == [2, 3, 5, 6, 7]  # the newest `keep`, without the torn line
    assert tail.skipped == 1
    log.write_bytes(lines[0])  # replaced by a shorter file: read again from the start
    tail.refresh()
    assert [r["step"] for r in tail.records] == [0]


def test_a_corrupt_or_vanished_state_is_a_503_naming_the_file_and_nothing_is_copied_aside(run, tmp_path):
    copy = tmp_path / "state"
    shutil.copytree(run.dir, copy)
    (copy / STATE_FILE).write_bytes(b"this is not a database" * 100)
    out = fetch(copy, "/api/leaderboard", "/api/chain", "/api/nope", "/api/challenges?limit=0")
    for path in ("/api/leaderboard", "/api/chain"):
        status, body = out[path]
        assert status == 503 and str(copy / STATE_FILE) in body["detail"] and "not a readable" in body["detail"]
    assert out["/api/nope"][0] == 404 and out["/api/challenges?limit=0"][0] == 400
    assert sorted(p.name for p in copy.iterdir()) == [LOG_FILE, STATE_FILE]  # no STATE.corrupt-* copy
    (copy / STATE_FILE).unlink()
    status, body = fetch(copy, "/api/leaderboard")["/api/leaderboard"]
    assert status == 503 and "no validator state" in body["detail"]


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "is not a folder"),
    (lambda d: d.mkdir(), "no validator state at"),
    (lambda d: (d.mkdir(), (d / STATE_FILE).write_bytes(b"")), "not a readable validator state file"),
    (lambda d: (d.mkdir(), (d / STATE_FILE).write_bytes(b"garbage" * 500)), "not a readable validator state file"),
])
def test_the_command_exits_2_with_a_message_for_a_folder_it_cannot_show(tmp_path, capsys, make, message):
    make(tmp_path / "state")
    assert main(["--dir", str(tmp_path / "state")]) == 2
    assert message in capsys.readouterr().err


def test_the_command_refuses_a_bad_address(run, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--dir", str(run.dir), "--address", "8092"])
    assert e.value.code == 2 and "expected HOST:PORT" in capsys.readouterr().err


def test_the_command_serves_the_folder_until_sigterm(run):
    port = free_port()
    exe = shutil.which("bitmind-lite")
    cmd = [exe] if exe else [sys.executable, "-m", "bitmind_lite.cli"]
    proc = subprocess.Popen([*cmd, "dashboard", "--dir", str(run.dir), "--address", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line + proc.stderr.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/chain", timeout=10) as r:
            assert json.loads(r.read())["step"] == ROUNDS
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            page = r.read().decode()
        assert "static/chart.umd.min.js" in page and "leaderboard" in page
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/chart.umd.min.js", timeout=10) as r:
            assert b"Chart.js v4" in r.read(400)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/chain", timeout=2)


def test_serve_binds_the_address_it_is_given_and_cleanup_frees_it(run):
    import aiohttp

    from bitmind_lite.validator import dashboard

    async def go():
        runner = await dashboard.serve(run.dir, "127.0.0.1", 0)  # as validator/run.py and localnet call it
        url = dashboard.url(runner)
        try:
            async with aiohttp.ClientSession() as session, session.get(url + "api/chain") as r:
                return url, r.status, await r.json()
        finally:
            await runner.cleanup()

    url, status, body = asyncio.run(go())
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url) and status == 200 and body["step"] == ROUNDS
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "api/chain", timeout=2)


def test_a_bad_dashboard_address_stops_the_validator_before_anything_loads(tmp_path, capsys):
    from bitmind_lite.config import ValidatorConfig
    from bitmind_lite.validator.run import EXIT_CONFIG, run_validator

    cfg = ValidatorConfig.model_validate({"neuron": {"dashboard_address": "localhost", "state_dir": str(tmp_path)}})
    try:
        assert run_validator(cfg) == EXIT_CONFIG
    finally:
        logger.remove()
        logger.add(sys.__stderr__, level="INFO")
    assert "--neuron.dashboard_address 'localhost': expected HOST:PORT" in capsys.readouterr().err
