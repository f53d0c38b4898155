"""The challenge loop on a real devnet with real HTTP miners on 127.0.0.1: faults, chain outages, hotkey changes,
and a validator process killed with SIGKILL that resumes with identical scores."""
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from bittensor.sp_core import Keypair
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from bitmind_lite.chain import Chain, Devnet, connect, create_wallet
from bitmind_lite.config import ValidatorConfig
from bitmind_lite.data.cache import CachedChallenge
from bitmind_lite.localnet import free_port
from bitmind_lite.protocol import decode_image
from bitmind_lite.validator.run import build_validator, state_paths
from bitmind_lite.validator.state import StateStore

sys.path.insert(0, str(Path(__file__).parent))
from test_validator_query import start_fake_miners, stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NETUID = 1


class Net:
    """A devnet with one validator and fake miners registered and serving."""

    def __init__(self, tmp_path: Path, behaviours: list[str], spare: int = 0, block_time: float = 0.2):
        self.tmp = tmp_path
        self.db = tmp_path / "devnet.db"
        self.devnet = Devnet.create(self.db, netuid=NETUID, block_time=block_time, weights_rate_limit=1, tempo=5)
        self.wallets = tmp_path / "wallets"
        self.vali = create_wallet("vali", "default", str(self.wallets))
        self.vali_uid = self.devnet.register(self.vali.hotkey.ss58_address, stake=10_000, validator_permit=True)
        self.proc, self.info = (start_fake_miners(tmp_path, behaviours + ["ok:0.5"] * spare, f"m{tmp_path.name}")
                                if behaviours or spare else (None, []))
        self.uids = [self.register(i) for i in range(len(behaviours))]

    def register(self, i: int, replace_uid=None) -> int:
        kp = Keypair.create_from_uri(f"//m{self.tmp.name}-{i}")
        uid = self.devnet.register(kp.ss58_address, replace_uid=replace_uid)
        result = Chain(connect(f"devnet:{self.db}"), NETUID, hotkey=kp).serve_axon("127.0.0.1", self.info[i]["port"])
        assert result.ok, result
        return uid

    def config(self, **neuron) -> ValidatorConfig:
        """Rounds sample in-line (no challenge cache: its filler process costs seconds per validator built) unless
        a test turns the cache back on."""
        return ValidatorConfig.model_validate({
            "netuid": NETUID, "subtensor": {"network": f"devnet:{self.db}"},
            "wallet": {"name": "vali", "hotkey": "default", "path": str(self.wallets)},
            "neuron": {"challenge_interval": 0.1, "timeout": 3.0, "epoch_length": 2, "sync_interval": 0.1,
                       "state_dir": str(self.tmp / "state"), "seed": 3, "min_valid": 1, "cache": False, **neuron}})

    def validator(self, retries: int = 2, **neuron):
        chain = Chain(connect(f"devnet:{self.db}"), NETUID, hotkey=self.vali.hotkey, retries=retries)
        return build_validator(self.config(**neuron), self.vali.hotkey, chain)

    def close(self):
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def symbols(tmp_path, monkeypatch):
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "symbols.json"))


@pytest.fixture
def entry_point_logging():
    """run_validator points loguru at the captured stderr; give it the real one back afterwards."""
    yield
    logger.remove()
    logger.add(sys.__stderr__, level="INFO")


def scrape(validator) -> dict:
    """{metric family name: family} of the validator's /metrics text."""
    return {f.name: f for f in text_string_to_metric_families(validator.metrics.render())}


def challenges(validator, n: int):
    async def go():
        try:
            return [await validator.challenge() for _ in range(n)]
        finally:
            await validator.client.close()
    return asyncio.run(go())


def test_faulty_miners_score_zero_and_the_round_completes(tmp_path, symbols):
    behaviours = ["ok:0.9", "sleep:30", "nan", "neg", "two", "abc", "empty", "500", "die"]
    net = Net(tmp_path, behaviours)
    try:
        v = net.validator()
        start = time.monotonic()
        (report,) = challenges(v, 1)
    finally:
        net.close()
    assert report.skipped is None and time.monotonic() - start < 3.0 + 2.5
    by_uid = {a.uid: a for a in report.answers}
    assert set(by_uid) == set(net.uids)  # the validator itself is never challenged
    honest, *faulty = net.uids
    assert by_uid[honest].prediction == 0.9
    for uid in faulty:
        assert by_uid[uid].prediction is None and report.rewards[uid] == 0.0
        assert list(v.state.miners[uid].history.answers) == [(None, report.label)]
    assert v.state.step == 1
    line = json.loads(state_paths(v.cfg)[1].read_text().splitlines()[-1])
    assert line["label"] == report.label and {m["uid"] for m in line["miners"]} == set(net.uids)
    assert all(k in line for k in ("source", "family", "augmentation"))


def test_scoring_continues_while_the_chain_is_down_and_weights_follow_when_it_returns(tmp_path, symbols):
    net = Net(tmp_path, ["ok:0.9", "ok:0.1", "random"])
    try:
        v = net.validator(retries=0)  # fail fast while the devnet is down
        challenges(v, 3)
        assert any(s > 0 for s in v.state.scores().values())
        before = v.state.last_weights_block
        net.devnet.set_available(False)
        down = challenges(v, 2)
        assert [r.skipped for r in down] == [None, None] and not any(r.chain_up for r in down)
        assert all(len(r.answers) == 3 for r in down) and v.state.step == 5  # scored from the last metagraph
        assert v.state.last_weights_block == before  # nothing could be set
        net.devnet.set_available(True)
        back = challenges(v, 1)[0]
    finally:
        net.close()
    assert back.chain_up and back.weights is not None and back.weights.set
    assert v.state.last_weights_block == back.weights.block and (before is None or back.weights.block > before)
    on_chain = net.devnet.weights()[net.vali_uid]
    expected = {u: w for u, w in back.weights.weights.items()}
    assert set(on_chain) == set(expected)
    assert all(abs(on_chain[u] - expected[u]) < 1e-3 for u in expected)


def test_a_replaced_hotkey_starts_from_a_clean_history(tmp_path, symbols):
    net = Net(tmp_path, ["ok:0.9", "ok:0.2"], spare=1)
    try:
        v = net.validator()
        challenges(v, 3)
        uid = net.uids[1]
        old = v.state.miners[uid]
        assert len(old.history) == 3
        net.register(2, replace_uid=uid)  # the spare miner takes the uid over, on its own port
        time.sleep(0.3)  # past sync_interval (0.1 s), so the next challenge reads the new metagraph
        (report,) = challenges(v, 1)
    finally:
        net.close()
    new = v.state.miners[uid]
    assert new.hotkey != old.hotkey and new.hotkey == net.info[2]["hotkey"]
    assert len(new.history) == 1 and new.history.answers[0][0] == 0.5  # only the new miner's one answer
    assert next(a for a in report.answers if a.uid == uid).hotkey == new.hotkey
    score_series = {s.labels["hotkey"] for s in scrape(v)["bitmind_validator_miner_score"].samples
                    if s.labels["uid"] == str(uid)}
    assert score_series == {new.hotkey}  # the old hotkey's series went with it


def test_round_durations_are_a_histogram_and_scores_are_labelled_with_uid_and_hotkey(tmp_path, symbols):
    net = Net(tmp_path, ["ok:0.9", "ok:0.1"])
    try:
        v = net.validator()
        reports = challenges(v, 3)
    finally:
        net.close()
    families = scrape(v)
    rounds = families["bitmind_validator_round_seconds"]
    assert rounds.type == "histogram"
    buckets = [s for s in rounds.samples if s.name == "bitmind_validator_round_seconds_bucket"]
    assert len(buckets) > 2 and buckets[-1].labels["le"] == "+Inf"
    for b in buckets:  # cumulative counts of the rounds that took at most `le` seconds
        assert b.value == sum(r.seconds <= float(b.labels["le"]) for r in reports), b
    (count,) = [s.value for s in rounds.samples if s.name == "bitmind_validator_round_seconds_count"]
    (total,) = [s.value for s in rounds.samples if s.name == "bitmind_validator_round_seconds_sum"]
    assert count == 3 and total == pytest.approx(sum(r.seconds for r in reports))
    scores = {(s.labels["uid"], s.labels["hotkey"]): s.value for s in families["bitmind_validator_miner_score"].samples}
    assert scores == pytest.approx({(str(uid), m.hotkey): m.score for uid, m in v.state.miners.items()})
    assert {(str(uid), net.info[i]["hotkey"]) for i, uid in enumerate(net.uids)} <= set(scores)


def test_all_zero_scores_set_no_weights(tmp_path, symbols):
    net = Net(tmp_path, ["nan", "500"])
    try:
        v = net.validator()
        reports = challenges(v, 2)
    finally:
        net.close()
    assert all(r.weights is not None and not r.weights.set and r.weights.reason == "all-zero" for r in reports)
    assert v.state.last_weights_block is None and net.vali_uid not in net.devnet.weights()


def test_rounds_are_served_from_the_challenge_pool_and_recorded(tmp_path, symbols, monkeypatch):
    monkeypatch.setattr(CachedChallenge, "image", lambda self: pytest.fail("a pooled PNG was decoded to be re-encoded"))
    net = Net(tmp_path, ["ok:0.9", "ok:0.1"])
    try:
        v = net.validator(cache=True, fake="procedural", cache_items=4)
        try:
            deadline = time.monotonic() + 30
            while v.sampler.cache.stats()["items"] < 3:  # so that no round below can find the pool empty
                assert time.monotonic() < deadline, "the cache filler did not fill the pool"
                time.sleep(0.05)
            reports = challenges(v, 2)
            body, label, meta = v._draw_challenge()  # what the next round would send
        finally:
            v.sampler.close()
    finally:
        net.close()
    served = [r.meta["cache"] for r in reports] + [meta["cache"]]
    assert all(c["hit"] and c["uses"] == 1 for c in served) and len({c["id"] for c in served}) == 3  # none replayed
    assert all(len(r.answers) == 2 and r.label == r.meta["label"] for r in reports)
    records = [json.loads(x) for x in state_paths(v.cfg)[1].read_text().splitlines()]
    assert [r["meta"]["cache"] for r in records] == served[:2]
    image = decode_image(json.loads(body)["image"])  # the pooled PNG goes out as is and is a valid challenge
    assert image.size == (256, 256) and meta["label"] == label
    families = scrape(v)
    cache_rounds = {s.labels["result"]: s.value for s in families["bitmind_validator_cache_rounds"].samples}
    assert cache_rounds == {"hit": 2}, cache_rounds  # no "miss" series
    (items,) = families["bitmind_validator_cache_items"].samples
    assert items.value in (0, 1, 2, 3, 4)
    (take_p95,) = families["bitmind_validator_cache_take_p95_seconds"].samples
    assert 0 < take_p95.value < 1


def test_sigkill_loses_at_most_the_challenge_in_flight_and_a_restart_resumes(tmp_path, symbols):
    net = Net(tmp_path, ["ok:0.9", "ok:0.1", "random"])
    cfg = net.config()
    state_db, log = state_paths(cfg)
    port = free_port()
    cmd = [sys.executable, str(ROOT / "neurons" / "validator.py"), "--netuid", str(NETUID),
           "--subtensor.network", f"devnet:{net.db}", "--wallet.name", "vali", "--wallet.path", str(net.wallets),
           "--neuron.state_dir", cfg.neuron.state_dir, "--neuron.challenge_interval", "0.05",
           "--neuron.timeout", "3", "--neuron.epoch_length", "2", "--neuron.min_valid", "1",
           "--neuron.seed", "5", "--neuron.cache", "false", "--logging.level", "WARNING",
           "--neuron.metrics_port", str(port), "--wandb.off", "false"]  # W&B asked for but not installed: must not crash
    try:
        proc = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)
        deadline = time.time() + 60
        while not (log.exists() and len(log.read_text().splitlines()) >= 6):
            assert proc.poll() is None and time.time() < deadline, "validator did not run"
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert re.search(r"^bitmind_validator_challenges_total [1-9]", metrics, re.M), metrics
        assert 'bitmind_validator_answers_total{result="valid"}' in metrics
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        saved = StateStore.open(state_db).load()
        records = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
        last = records[-1]
        assert saved.step - 1 - last["step"] in (0, 1)  # killed after the save, maybe before the log line
        if saved.step - 1 == last["step"]:
            assert {m["uid"]: m["score"] for m in last["miners"]} == \
                {u: round(s, 6) for u, s in saved.scores().items() if u in net.uids}
        resumed = net.validator()  # what a restarted validator loads
        assert resumed.state.step == saved.step and resumed.state.scores() == saved.scores()
        assert {u: m.history.to_list() for u, m in resumed.state.miners.items()} == \
            {u: m.history.to_list() for u, m in saved.miners.items()}
        challenges(resumed, 1)
        assert resumed.state.step == saved.step + 1
        assert json.loads(log.read_text().splitlines()[-1])["step"] == saved.step
    finally:
        net.close()


def test_corrupt_state_stops_the_validator_with_a_clear_error(tmp_path, symbols, capsys, entry_point_logging):
    from bitmind_lite.validator.run import EXIT_CONFIG, run_validator

    net = Net(tmp_path, [])
    cfg = net.config()
    state_db, _ = state_paths(cfg)
    state_db.parent.mkdir(parents=True)
    state_db.write_bytes(b"this is not a database" * 100)
    assert run_validator(cfg) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "corrupt" in err and "copy was saved to" in err and "Nothing was reset" in err
    assert any(p.name.startswith("state.db.corrupt-") for p in state_db.parent.iterdir())
    assert state_db.read_bytes().startswith(b"this is not a database")


def test_an_unregistered_hotkey_is_a_clear_configuration_error(tmp_path, symbols, capsys, entry_point_logging):
    from bitmind_lite.validator.run import EXIT_CONFIG, run_validator

    net = Net(tmp_path, [])
    create_wallet("stranger", "default", str(net.wallets))
    cfg = net.config().model_copy(update={"wallet": net.config().wallet.model_copy(update={"name": "stranger"})})
    assert run_validator(cfg) == EXIT_CONFIG
    assert "is not registered on netuid 1" in capsys.readouterr().err
