"""Typed configuration: subnet-style flags, environment, .env files, and clear errors."""
import pytest

from bitmind_lite.config import MinerConfig, ValidatorConfig, dump_config, load_config


def test_flags_fill_nested_sections():
    cfg = load_config(MinerConfig, ["--netuid", "34", "--subtensor.network", "test", "--neuron.device", "cpu",
                                    "--blacklist.force_validator_permit", "false", "--axon.port", "9000",
                                    "--blacklist.allow_non_registered"], env={})
    assert cfg.netuid == 34 and cfg.subtensor.network == "test" and cfg.neuron.device == "cpu"
    assert cfg.blacklist.force_validator_permit is False and cfg.axon.port == 9000
    assert cfg.blacklist.allow_non_registered is True


def test_precedence_flags_over_env_over_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("NETUID=7\nWALLET_NAME=from_file\nNEURON_SAMPLE_SIZE=5\n")
    cfg = load_config(ValidatorConfig, ["--env-file", str(env_file), "--neuron.sample_size", "9"],
                      env={"WALLET_NAME": "from_env"})
    assert cfg.netuid == 7 and cfg.wallet.name == "from_env" and cfg.neuron.sample_size == 9
    assert "--neuron.sample_size = 9" in dump_config(cfg)


@pytest.mark.parametrize("argv,needle", [
    (["--neuron.device", "tpu"], "--neuron.device"),
    (["--netuid", "-1"], "--netuid"),
    (["--axon.port", "http"], "--axon.port"),
])
def test_bad_values_exit_2_naming_the_flag(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        load_config(MinerConfig, argv, env={})
    assert e.value.code == 2 and needle in capsys.readouterr().err


def test_missing_env_file_is_an_error(capsys):
    with pytest.raises(SystemExit):
        load_config(MinerConfig, ["--env-file", "/nonexistent/.env"], env={})
    assert "no such file" in capsys.readouterr().err
