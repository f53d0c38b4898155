"""`bitmind-lite localnet` end to end: devnet, real miner processes, the validator, weights on chain, clean exit."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from bitmind_lite.detectors import default_weights


MINER_URL = r"miner\d+: uid \d+, detector \S+, http://127\.0\.0\.1:(\d+)"
DASHBOARD_URL = r"dashboard: http://127\.0\.0\.1:(\d+)/"


def _cli() -> list[str]:
    exe = shutil.which("bitmind-lite")
    return [exe] if exe else [sys.executable, "-m", "bitmind_lite.cli"]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_localnet_scores_miners_and_sets_weights_on_chain(tmp_path):
    out = tmp_path / "leaderboard.json"
    rounds = 40  # 15 let the random miner out-earn NPR about one run in seven (binomial luck); 40: under 1 %
    r = subprocess.run([*_cli(), "localnet", "--miners", "3", "--rounds", str(rounds), "--interval", "0.5",
                        "--dir", str(tmp_path / "net"), "--json", str(out), "--seed", "1",
                        # the families the bundled weights see best (82 % vs 63 % on the whole offline mix): this
                        # checks the plumbing and that a trained NPR out-earns noise with little binomial luck;
                        # per-family skill on the zoo is measured by base_miner/test.py and bitmind-lite bench
                        "--fake", "procedural"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {row["detector"]: row for row in result["miners"]}
    assert set(rows) == {"npr", "npr_raw", "random"} and result["rounds"] == rounds
    assert all(row["valid"] == rounds for row in rows.values()), "honest miners answer every challenge"
    assert result["weights_block"] is not None
    assert sum(row["weight"] for row in rows.values()) == pytest.approx(1.0, abs=1e-3)
    assert "uid" in r.stdout and "weight" in r.stdout  # the leaderboard was printed
    assert "accuracy per family" in r.stdout
    per_family = result["per_family"]
    assert set(per_family) == {"miner1", "miner2", "miner3"}
    for fams in per_family.values():  # every answer is counted under its challenge's family
        assert sum(c["n"] for c in fams.values()) == rounds
        assert set(fams) <= {"real", "nearest", "bilinear", "bicubic", "transposed", "pixelshuffle"}
    ports = [int(p) for p in re.findall(MINER_URL, r.stdout)]
    assert len(ports) == 3 and not any(_listening(p) for p in ports), "every miner process was stopped"
    (dashboard,) = re.findall(DASHBOARD_URL, r.stdout)
    assert not _listening(int(dashboard)), "the dashboard was stopped"
    if default_weights("npr") is None:
        pytest.skip("weights/npr.pth is not bundled yet: the NPR-beats-random check needs trained weights")
    assert rows["npr"]["weight"] > rows["random"]["weight"]
    assert rows["npr"]["accuracy"] > rows["random"]["accuracy"]


def test_ctrl_c_stops_every_process(tmp_path):
    proc = subprocess.Popen([*_cli(), "localnet", "--miners", "1", "--rounds", "500", "--dir", str(tmp_path / "net")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    deadline = time.time() + 180
    for line in proc.stdout:
        lines.append(line)
        if "round   2/" in line or time.time() > deadline:
            break
    ports = [int(p) for p in re.findall(MINER_URL, "".join(lines))]
    ports += [int(p) for p in re.findall(DASHBOARD_URL, "".join(lines))]
    assert len(ports) == 2 and all(_listening(p) for p in ports), "".join(lines)  # the miner and the dashboard
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    assert not any(_listening(p) for p in ports)
