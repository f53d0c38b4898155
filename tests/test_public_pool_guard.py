"""A validator on a real network refuses the public bundled photos (miners could label them by lookup)."""
import pytest

from bitmind_lite.config import ValidatorConfig
from bitmind_lite.validator.run import EXIT_CONFIG, check_real_pool, run_validator


def _cfg(network, real="bundled", allow=False, tmp_path=None):
    return ValidatorConfig.model_validate({"subtensor": {"network": network},
                                           "neuron": {"real": real, "allow_public_real_pool": allow,
                                                      "state_dir": str(tmp_path or "/nonexistent")}})


@pytest.mark.parametrize("network", ["finney", "test", "wss://entrypoint-finney.opentensor.ai:443"])
def test_public_pool_on_a_real_network_is_refused(network):
    problem = check_real_pool(_cfg(network))
    assert problem and "public" in problem and "--neuron.allow_public_real_pool" in problem
    assert "dir:PATH" in problem  # it says what to do instead


def test_local_networks_and_private_pools_and_the_override_pass(tmp_path):
    private = tmp_path / "photos"
    private.mkdir()
    assert check_real_pool(_cfg("devnet:/tmp/x.db")) is None
    assert check_real_pool(_cfg("local")) is None
    assert check_real_pool(_cfg("finney", real=f"dir:{private}")) is None
    assert check_real_pool(_cfg("finney", allow=True)) is None


def test_a_dir_pool_that_links_the_bundled_photos_is_public(tmp_path):
    from bitmind_lite.data.real import bundled_manifest, locate_bundled

    photo = next(p for p in map(locate_bundled, bundled_manifest()["photos"]) if p is not None)
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "a.jpg").symlink_to(photo)
    assert "bundled photos" in check_real_pool(_cfg("finney", real=f"dir:{pool}"))


def test_the_validator_exits_2_before_touching_keys_or_chain(tmp_path, capsys):
    assert run_validator(_cfg("finney", tmp_path=tmp_path)) == EXIT_CONFIG
