"""`bitmind-lite miner stats` and GET /stats: a miner's standing on chain and its last hour per validator.

In-process miners on a devnet (real sockets, real btauth/1 signatures, the real SDK metagraph), the CLI through
`bitmind_lite.cli.main` as an operator types it, and the bounded window on its own with a fake clock.
"""
import json

import httpx
import pytest

from bitmind_lite.chain import Chain, connect
from bitmind_lite.cli import main as cli
from bitmind_lite.detectors import create_detector
from bitmind_lite.miner.stats import UNAUTHENTICATED, CallerWindow
from bitmind_lite.protocol import DETECT_PATH
from miner_support import (body_of, free_port, in_process_miner, keypair, post, sample_image,  # noqa: F401
                           subnet, wait_for)


@pytest.fixture(autouse=True)
def no_env_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no developer .env.miner is read by the CLI


def chain_flags(subnet) -> list[str]:
    return ["--subtensor.network", f"devnet:{subnet.db}", "--netuid", "1"]


def stats_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert cli(["miner", "stats", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def traffic(node) -> None:
    """Alice 3 answered, Eve 2 answered, Charlie (no permit) 1 refused, one unsigned request refused."""
    for name, n in (("Alice", 3), ("Eve", 2), ("Charlie", 1)):
        for i in range(n):
            post(node, keypair(name), body_of(sample_image(i)))
    httpx.post(node.url + DETECT_PATH, content=body_of(sample_image(9)), timeout=30)


def rows_by_hotkey(report: dict) -> dict:
    return {row["hotkey"]: row for row in report["validators"]}


def counted(report: dict, total: int) -> bool:
    # a request is recorded once its answer is sent, so a read right after the last answer may come too early
    return sum(row["requests"] for row in report["validators"]) == total


def test_stats_show_the_uid_and_each_validators_requests_and_refusals(subnet, capsys):
    uids = Chain(connect(f"devnet:{subnet.db}"), 1).metagraph()
    with in_process_miner(subnet, create_detector("random", device="cpu")) as node:
        traffic(node)
        report = wait_for(lambda: (r := stats_json(capsys, "--url", node.url)) and counted(r, 7) and r, 10,
                          "7 requests counted")
        capsys.readouterr()
        assert cli(["miner", "stats", "--url", node.url]) == 0
        table = capsys.readouterr().out
    assert report["hotkey"] == subnet.hotkey
    assert report["chain"]["registered"] and report["chain"]["uid"] == subnet.uid
    assert set(report["chain"]) >= {"stake", "incentive", "trust", "rank", "emission", "block"}
    assert report["model"]["detector"] == "random" and report["uptime_s"] > 0
    rows = rows_by_hotkey(report)
    alice, eve, charlie = (keypair(n).ss58_address for n in ("Alice", "Eve", "Charlie"))
    assert {k: (r["requests"], r["answered"], r["refusals"]) for k, r in rows.items()} == {
        alice: (3, 3, {}), eve: (2, 2, {}), charlie: (1, 0, {"forbidden": 1}),
        UNAUTHENTICATED: (1, 0, {"unauthorized": 1})}
    assert rows[alice]["uid"] == uids.by_hotkey(alice).uid and rows[alice]["stake"] == 1000
    assert 0 < rows[alice]["p50_ms"] <= rows[alice]["p95_ms"] and rows[charlie]["p50_ms"] is None
    assert f"uid {subnet.uid}" in table and alice in table and "forbidden=1" in table


def test_with_an_operator_address_stats_are_served_there_and_not_on_the_public_port(subnet):
    address = f"127.0.0.1:{free_port()}"
    with in_process_miner(subnet, create_detector("random", device="cpu"), metrics_address=address) as node:
        post(node, keypair("Ferdie"), body_of(sample_image(1))).raise_for_status()
        assert httpx.get(node.url + "/stats", timeout=10).status_code == 404
        report = wait_for(lambda: (r := httpx.get(f"http://{address}/stats", timeout=10).json()) and counted(r, 1)
                          and r, 10, "the request counted")
        assert "bitmind_miner_requests_total" in httpx.get(f"http://{address}/metrics", timeout=10).text
    assert report["chain"]["uid"] == subnet.uid
    assert [(r["hotkey"], r["answered"]) for r in report["validators"]] == [(keypair("Ferdie").ss58_address, 1)]


def test_the_public_port_refuses_stats_to_a_proxied_caller(subnet):
    with in_process_miner(subnet, create_detector("random", device="cpu")) as node:
        r = httpx.get(node.url + "/stats", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
        assert r.status_code == 403 and r.json()["kind"] == "forbidden"
        assert httpx.get(node.url + "/stats", timeout=10).status_code == 200


def test_from_the_chain_alone_standing_and_the_validators_weights(subnet, capsys):
    flags = [*chain_flags(subnet), "--wallet.name", "miner", "--wallet.path", str(subnet.wallets)]
    vali = Chain(connect(f"devnet:{subnet.db}"), 1, keypair("V0"))
    assert vali.set_weights({subnet.uid: 1.0}, version_key=1).ok
    report = stats_json(capsys, "--chain", *flags)
    assert report["chain"]["uid"] == subnet.uid and report["chain"]["network"] == f"devnet:{subnet.db}"
    assert report["chain"]["incentive"] > 0 and report["chain"]["trust"] == 1.0  # the one validator weights it
    assert [(w["hotkey"], w["weight"]) for w in report["weights"]] == [(keypair("V0").ss58_address, 1.0)]
    # a hotkey that is not registered is an answer, not an error
    stranger = stats_json(capsys, *chain_flags(subnet), "--hotkey", keypair("Bob").ss58_address)
    assert stranger["chain"]["registered"] is False and stranger["weights"] == []
    # no --url, no miner on this machine: it says so and reads the chain
    assert cli(["miner", "stats", *flags, "--axon.port", str(free_port())]) == 0
    out = capsys.readouterr()
    assert "reading the chain instead" in out.err and f"uid {subnet.uid}" in out.out


@pytest.mark.parametrize("args, message", [
    (["--url", "127.0.0.1:1"], "no miner answering"),
    (["--chain", "--wallet.name", "nobody"], "hotkey file"),
])
def test_nothing_to_show_is_one_line_and_exit_2(subnet, capsys, args, message, tmp_path):
    assert cli(["miner", "stats", *chain_flags(subnet), "--wallet.path", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


class Clock:
    def __init__(self):
        self.now = 10_000.0

    def __call__(self):
        return self.now


def test_the_window_forgets_after_an_hour_and_stays_bounded():
    clock = Clock()
    window = CallerWindow(max_callers=3, clock=clock)
    for ms in range(1, 101):
        window.record("vali", 200, ms / 1000)
    window.record("vali", 429, 0.001)
    (row,) = window.summary()
    assert (row["requests"], row["answered"], row["refusals"]) == (101, 100, {"rate_limited": 1})
    assert row["p50_ms"] == pytest.approx(50.5) and row["p95_ms"] == pytest.approx(95.05)
    clock.now += 1800
    window.record("vali", 200, 0.2)
    assert window.summary()[0]["requests"] == 102
    clock.now += 1900  # the first 101 are more than an hour old now
    assert [(r["requests"], r["p50_ms"]) for r in window.summary()] == [(1, pytest.approx(200))]
    # full: a caller that was never answered goes first, whoever was seen last
    window.record("refused", 403, 0.001)
    window.record("other", 200, 0.01)
    window.record("new", 200, 0.01)
    assert {r["hotkey"] for r in window.summary()} == {"vali", "other", "new"}
    clock.now += 3700
    assert window.summary() == []
