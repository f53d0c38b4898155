"""Typed configuration: subnet-style flags, environment, .env files, and clear errors."""
import socket

import pytest

from bitmind_lite.config import MinerConfig, ValidatorConfig, describe_sources, dump_config, load_config, reserve_port


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


def test_a_bad_value_is_reported_where_it_was_set(tmp_path, capsys):
    """An environment variable or a .env line is named as such, not as the flag the operator never typed."""
    with pytest.raises(SystemExit) as e:
        load_config(MinerConfig, [], env={"AXON_PORT": "abc"})
    err = capsys.readouterr().err
    assert e.value.code == 2 and "environment variable AXON_PORT='abc'" in err and "--axon.port" not in err
    env_file = tmp_path / ".env.miner"
    env_file.write_text("NEURON_DEVICE=tpu\n")
    with pytest.raises(SystemExit) as e:
        load_config(MinerConfig, ["--env-file", str(env_file)], env={})
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"NEURON_DEVICE='tpu' in {env_file}" in err and "--neuron.device" not in err


@pytest.mark.parametrize("argv, env, level", [
    (["--logging.debug"], {}, "DEBUG"),
    (["--logging.trace"], {}, "TRACE"),
    (["--logging.info"], {"LOGGING_LEVEL": "ERROR"}, "INFO"),  # a flag, so it wins over the environment
    (["--logging.level", "debug"], {}, "DEBUG"),
    ([], {"LOGGING_LEVEL": "Warning"}, "WARNING"),
])
def test_bittensor_logging_flags_and_any_case_levels(argv, env, level):
    assert load_config(ValidatorConfig, argv, env=env).logging.level == level


def test_sources_say_which_env_file_was_read_or_looked_for(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keys = ("subtensor.network", "wallet.name", "axon.port")
    cfg = load_config(MinerConfig, ["--axon.port", "9001"], env={}, default_env_file=".env.miner")
    level, line = describe_sources(cfg, keys)
    assert level == "WARNING" and f"looked for {tmp_path / '.env.miner'}" in line
    assert "subtensor.network='finney' (default)" in line and "wallet.name='default' (default)" in line
    assert "axon.port=9001 (--axon.port)" in line
    (tmp_path / ".env.miner").write_text("WALLET_NAME=m1\n")
    level, line = describe_sources(load_config(MinerConfig, [], env={}, default_env_file=".env.miner"), keys)
    assert level == "INFO" and str(tmp_path / ".env.miner") in line and "looked for" not in line
    assert f"wallet.name='m1' (WALLET_NAME in {tmp_path / '.env.miner'})" in line


def test_a_port_in_use_is_a_clear_error_naming_the_setting():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=f"127.0.0.1:{port} is already in use.*--axon.port / AXON_PORT"):
            reserve_port("127.0.0.1", port, "axon.ip", "axon.port")
    reserve_port("127.0.0.1", port, "axon.ip", "axon.port").close()  # free again once its owner is gone
