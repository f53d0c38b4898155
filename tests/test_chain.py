"""Chain layer through the real `bittensor.Subtensor` on an embedded devnet in a temp dir."""
import sqlite3
import time

import bittensor as bt
import pytest
from bittensor.sp_core import Keypair
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from bitmind_lite.chain import (BITTENSOR_RANGE, Chain, ChainUnavailable, Devnet, DevnetError, DevnetUnsupported,
                                connect)
from bitmind_lite.config import NodeConfig

NETUID = 7
VALI, MINER1, MINER2, STRANGER = (Keypair.create_from_uri(u) for u in ("//Alice", "//Bob", "//Charlie", "//Dave"))


@pytest.fixture(autouse=True)
def symbols_cache(tmp_path, monkeypatch):
    # Subtensor.connect() caches token symbols; keep that out of the home directory.
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "token_symbols.json"))


@pytest.fixture
def devnet(tmp_path):
    dev = Devnet.create(tmp_path / "dev.db", netuid=NETUID, weights_rate_limit=20, min_allowed_weights=1)
    dev.register(VALI.ss58_address, stake=1000.5, validator_permit=True)
    dev.register(MINER1.ss58_address, stake=2.0)
    dev.register(MINER2.ss58_address)
    return dev


def chain_for(dev: Devnet, hotkey=None, **kw) -> Chain:
    return Chain(connect(f"devnet:{dev.path}"), NETUID, hotkey, **kw)


def test_installed_bittensor_is_the_range_these_tests_were_written_for():
    assert Version(bt.__version__) in SpecifierSet(",".join(BITTENSOR_RANGE)), bt.__version__


def test_registered_hotkeys_come_back_in_the_metagraph_with_stake_and_permits(devnet):
    mg = chain_for(devnet).metagraph()
    assert (mg.netuid, len(mg)) == (NETUID, 3)
    assert mg.hotkeys == [VALI.ss58_address, MINER1.ss58_address, MINER2.ss58_address]
    vali, miner = mg.by_hotkey(VALI.ss58_address), mg.by_uid(1)
    assert (vali.uid, vali.stake, vali.validator_permit, vali.endpoint) == (0, 1000.5, True, None)
    assert (miner.hotkey, miner.stake, miner.validator_permit) == (MINER1.ss58_address, 2.0, False)
    assert mg.by_hotkey(STRANGER.ss58_address) is None and mg.by_uid(3) is None
    # the same data through the SDK's own typed reads
    sdk = connect(f"devnet:{devnet.path}").subnets.metagraph(NETUID)
    assert [n.validator_permit for n in sdk.neurons] == [True, False, False]
    assert sdk.neurons[0].total_stake == bt.alpha(1000.5, NETUID)


def test_uid_lookup_and_unknown_hotkey_is_none(devnet):
    chain = chain_for(devnet)
    assert chain.uid(MINER2.ss58_address) == 2
    assert chain.uid(STRANGER.ss58_address) is None


def test_blocks_advance_with_wall_time(tmp_path):
    dev = Devnet.create(tmp_path / "fast.db", netuid=1, block_time=0.1)
    chain = Chain(connect(f"devnet:{dev.path}"), 1)
    t0, b0 = time.time(), chain.block()
    time.sleep(0.35)
    b1, elapsed = chain.block(), time.time() - t0
    assert 3 <= b1 - b0 <= elapsed / 0.1 + 1
    assert chain.subtensor.wait_for_block(b1 + 2, timeout=5).number >= b1 + 2      # the SDK's block subscription
    assert dev.advance(100) >= b1 + 100 and chain.block() >= b1 + 102


def test_serve_axon_publishes_the_endpoint_once(devnet):
    miner = chain_for(devnet, MINER1)
    first = miner.serve_axon("127.0.0.1", 8101)
    assert first.ok and first.code is None, first
    assert chain_for(devnet).metagraph().by_uid(1).endpoint == ("127.0.0.1", 8101)
    again = miner.serve_axon("127.0.0.1", 8101)
    assert (again.ok, again.message) == (True, "unchanged")
    assert [x["ok"] for x in devnet.extrinsics()] == [1]          # the unchanged call sent nothing
    assert miner.serve_axon("::1", 8102).ok
    assert chain_for(devnet).metagraph().by_uid(1).endpoint == ("::1", 8102)


def test_serve_axon_refusals_are_values(devnet):
    assert chain_for(devnet, STRANGER).serve_axon("10.0.0.1", 1).code == "NOT_REGISTERED"
    assert chain_for(devnet, MINER1).serve_axon("not-an-ip", 1).code == "INVALID_ARGUMENT"
    devnet.set_hyperparameters(serving_rate_limit=50)
    miner = chain_for(devnet, MINER2)
    assert miner.serve_axon("10.0.0.2", 9000).ok
    limited = miner.serve_axon("10.0.0.2", 9001)
    assert (limited.ok, limited.code) == (False, "RATE_LIMITED") and "ServingRateLimitExceeded" in limited.message


def test_set_weights_then_read_them_and_the_rate_limit_is_a_value(devnet):
    vali = chain_for(devnet, VALI)
    result = vali.set_weights({1: 0.25, 2: 0.75}, version_key=3)
    assert result.ok, result
    weights = vali.weights()
    assert set(weights) == {0} and weights[0][1] == pytest.approx(0.25, abs=1e-4)
    assert devnet.weights()[0][2] == pytest.approx(0.75, abs=1e-4)
    assert chain_for(devnet).metagraph().by_uid(0).last_update == vali.block()
    mg = vali.metagraph()
    assert mg.by_uid(2).incentive == pytest.approx(0.75, abs=1e-3)

    limited = vali.set_weights({1: 1.0, 2: 1.0}, version_key=3)
    assert (limited.ok, limited.code) == (False, "RATE_LIMITED"), limited
    assert 1 <= limited.retry_in_blocks <= 20
    assert devnet.weights()[0][1] == pytest.approx(0.25, abs=1e-4)   # unchanged
    devnet.advance(limited.retry_in_blocks)
    assert vali.set_weights({1: 1.0, 2: 1.0}, version_key=3).ok
    assert devnet.weights()[0] == {1: 0.5, 2: 0.5}


def test_chain_side_weight_rules(devnet):
    devnet.set_hyperparameters(version_key=5, min_allowed_weights=2, max_weight_limit=39321)  # 60% max share
    vali = chain_for(devnet, VALI)
    old_key = vali.set_weights({1: 1.0, 2: 1.0}, version_key=4)
    assert (old_key.code, old_key.message.split(":")[0]) == ("INVALID_ARGUMENT", "IncorrectWeightVersionKey")
    assert "at least 2 weights" in vali.set_weights({1: 1.0}, version_key=5).message         # SDK preflight
    no_permit = chain_for(devnet, MINER1).set_weights({0: 1.0, 2: 1.0}, 5)
    assert (no_permit.code, no_permit.message.split(":")[0]) == ("NOT_AUTHORIZED", "NeuronNoValidatorPermit")
    assert chain_for(devnet, MINER1).set_weights({1: 1.0}, 5).ok                             # self-weight is allowed
    assert chain_for(devnet, STRANGER).set_weights({0: 1.0}, 5).code == "NOT_REGISTERED"
    assert vali.set_weights({1: float("nan"), 2: 1.0}, 5).code == "INVALID_ARGUMENT"
    assert vali.set_weights({}, 5).code == "INVALID_ARGUMENT"
    clipped = vali.set_weights({1: 0.95, 2: 0.05}, version_key=5)                            # the SDK clips to 60%
    assert clipped.ok, clipped
    assert max(devnet.weights()[0].values()) <= 0.6 + 1e-3


def test_devnet_enforces_max_weight_and_signatures_itself(devnet):
    """Raw calls that skip the SDK's client-side conforming still meet the devnet's own checks."""
    devnet.set_hyperparameters(max_weight_limit=32768, weights_rate_limit=0)
    sub = connect(f"devnet:{devnet.path}")
    call = bt.calls.SubtensorModule.set_mechanism_weights(netuid=NETUID, mecid=0, dests=[1, 2],
                                                          weights=[65535, 1000], version_key=0)
    result = sub.submit_call(call, VALI, signer="hotkey")
    assert not result.success and result.error.name == "MaxWeightExceeded"
    public_only = Keypair(ss58_address=VALI.ss58_address)                 # cannot sign
    assert chain_for(devnet, public_only).set_weights({1: 1.0, 2: 1.0}, 0).code == "INVALID_ARGUMENT"
    assert devnet.weights() == {}


def test_commit_reveal_uses_the_timelocked_commit_and_counts_for_the_rate_limit(tmp_path):
    dev = Devnet.create(tmp_path / "cr.db", netuid=2, tempo=10, weights_rate_limit=5, commit_reveal=True)
    dev.register(VALI.ss58_address, stake=10, validator_permit=True)
    dev.register(MINER1.ss58_address)
    sub = connect(f"devnet:{dev.path}")
    result = sub.execute(bt.SetWeights(netuid=2, weights={0: 0.5, 1: 0.5}, version_key=1), VALI)
    assert result.success and result.data["reveal_round"] > 0
    commits = sub.weights.timelocked_weight_commits(netuid=2)
    assert [c["hotkey"] for row in commits.values() for c in row] == [VALI.ss58_address]
    assert dev.weights() == {}                       # never revealed: no drand beacon offline
    assert Chain(sub, 2, VALI).set_weights({1: 1.0}, 1).code == "RATE_LIMITED"


def test_replacing_a_uid_gives_it_a_fresh_hotkey(devnet):
    vali, miner = chain_for(devnet, VALI), chain_for(devnet, MINER1)
    assert miner.serve_axon("10.0.0.7", 8091).ok and vali.set_weights({1: 1.0, 2: 1.0}, 0).ok
    assert devnet.register(STRANGER.ss58_address, stake=1.0, replace_uid=1) == 1
    mg = vali.metagraph()
    assert (mg.by_uid(1).hotkey, mg.by_uid(1).endpoint, mg.by_uid(1).stake) == (STRANGER.ss58_address, None, 1.0)
    assert vali.uid(MINER1.ss58_address) is None and len(mg) == 3
    devnet.register(MINER1.ss58_address, replace_uid=0)                    # the validator itself is replaced
    assert devnet.weights() == {} and vali.uid(VALI.ss58_address) is None
    with pytest.raises(DevnetError, match="already registered as uid 2"):
        devnet.register(MINER2.ss58_address)
    with pytest.raises(DevnetError, match="replace_uid 9"):
        devnet.register(VALI.ss58_address, replace_uid=9)


def test_unreachable_devnet_raises_chain_unavailable_and_comes_back(devnet):
    vali = chain_for(devnet, VALI, retries=1, backoff=0.05)
    assert vali.block() >= 1
    devnet.set_available(False)
    for call in (vali.block, vali.metagraph, lambda: vali.uid(VALI.ss58_address),
                 lambda: vali.set_weights({1: 1.0}, 0), lambda: vali.serve_axon("10.0.0.1", 1)):
        t0 = time.time()
        with pytest.raises(ChainUnavailable, match="offline"):
            call()
        assert time.time() - t0 < 2
    devnet.set_available(True)
    assert len(vali.metagraph()) == 3
    devnet.set_available(False, for_seconds=0.3)                 # comes back by itself
    with pytest.raises(ChainUnavailable):
        vali.block()
    time.sleep(0.35)
    assert vali.block() >= 1
    moved = devnet.path.with_name("away.db")                     # the file moved away: unreachable, not recreated
    devnet.path.rename(moved)
    with pytest.raises(ChainUnavailable, match="gone"):
        vali.metagraph()
    assert not devnet.path.exists()
    moved.rename(devnet.path)
    assert vali.uid(MINER1.ss58_address) == 1


def test_bad_devnet_files_give_clear_errors_and_are_never_recreated(tmp_path, devnet):
    missing = tmp_path / "missing.db"
    with pytest.raises(DevnetError, match="does not exist"):
        connect(f"devnet:{missing}")
    assert not missing.exists()
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DevnetError, match="corrupt or not a devnet"):
        Devnet(garbage)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(DevnetError, match="not a bitmind-lite devnet"):
        Devnet(other)
    with sqlite3.connect(devnet.path) as con:
        con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(DevnetError, match="schema version 99"):
        Devnet(devnet.path)
    with pytest.raises(DevnetError, match="already exists"):
        Devnet.create(devnet.path, netuid=1)
    assert sqlite3.connect(devnet.path).execute("SELECT COUNT(*) FROM neurons").fetchone()[0] == 3
    with pytest.raises(DevnetError, match="tempo"):
        Devnet.create(tmp_path / "bad-params.db", netuid=1, tempo=0)
    with pytest.raises(ValueError, match="devnet:PATH"):
        connect("no-such-network")


def test_unsupported_calls_name_the_call(devnet):
    sub = connect(f"devnet:{devnet.path}")
    with pytest.raises(DevnetUnsupported, match="NeuronInfoRuntimeApi.get_neurons_lite"):
        sub.neurons.all(NETUID)
    with pytest.raises(DevnetUnsupported, match=r"Substrate.constant\(\)"):
        sub.constant(bt.constants.Balances.ExistentialDeposit)
    with pytest.raises(DevnetUnsupported, match="SubtensorModule.burned_register"):
        sub.execute(bt.BurnedRegister(netuid=NETUID, hotkey_ss58=STRANGER.ss58_address), STRANGER)


def test_chain_from_config_and_an_unknown_subnet(devnet):
    cfg = NodeConfig(netuid=NETUID, subtensor={"network": f"devnet:{devnet.path}"})
    chain = Chain.from_config(cfg, hotkey=VALI)
    assert chain.uid(VALI.ss58_address) == 0 and chain.network == "local"
    with pytest.raises(bt.ChainError, match="subnet 8 does not exist"):
        Chain(chain.subtensor, 8).metagraph()
    with pytest.raises(ValueError, match="no hotkey"):
        Chain(chain.subtensor, NETUID).set_weights({0: 1.0}, 0)
    chain.close()
