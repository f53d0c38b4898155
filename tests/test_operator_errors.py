"""Operator mistakes against real node processes on 127.0.0.1: each ends in one clear line and exit status 2 (which
pm2 leaves stopped: test_miner_lifecycle.py), never a traceback, a late crash or a silent default.

The nodes run from a temporary directory with no wallet, so those that get past the mistake under test stop at the
hotkey (exit 2) without ever reaching a chain.
"""
import os
import socket
import subprocess
import sys

import pytest
import torch

from bitmind_lite.config import MinerConfig, ValidatorConfig, _env_name, _flag_items
from bitmind_lite.detectors import NPRNet
from miner_support import ROOT, free_port, miner_flags, subnet  # noqa: F401

SETTINGS_ENV = {_env_name(d) for model in (MinerConfig, ValidatorConfig) for d, _a, _f in _flag_items(model)}


def node(kind: str, *flags: str, cwd, **env) -> subprocess.CompletedProcess:
    """`bitmind-lite miner|validator FLAGS` with only `env` as settings (none leak in from the caller's shell)."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    return subprocess.run([sys.executable, "-m", "bitmind_lite.cli", kind, *flags], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=180)


def no_wallet(tmp_path) -> list[str]:
    return ["--wallet.path", str(tmp_path / "no-wallets")]


@pytest.mark.parametrize("kind, ip_flag, port_flag", [
    ("miner", "axon.ip", "axon.port"),
    ("validator", "neuron.metrics_ip", "neuron.metrics_port"),
])
def test_a_port_in_use_exits_2_before_the_keys_the_chain_or_the_model(tmp_path, kind, ip_flag, port_flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = node(kind, f"--{ip_flag}", "127.0.0.1", f"--{port_flag}", str(port), *no_wallet(tmp_path),
                 "--subtensor.network", f"devnet:{tmp_path / 'no-chain.db'}", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"127.0.0.1:{port} is already in use" in r.stderr and f"--{port_flag} / {_env_name(port_flag)}" in r.stderr
    assert "cannot load hotkey" not in r.stderr  # found before the keys, so before the chain and the model
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize("kind", ["text", "wrong_shapes"])
def test_miner_with_weights_that_are_not_a_checkpoint_exits_2_naming_the_file(subnet, tmp_path, kind):
    weights = tmp_path / "npr.pth"
    if kind == "text":
        weights.write_text("model card: see README\n")
    else:
        state = NPRNet().state_dict()
        state["fc1.weight"] = torch.zeros(1, 256)  # the head of a wider network
        torch.save(state, weights)
    r = subprocess.run([sys.executable, str(ROOT / "neurons" / "miner.py"), *miner_flags(subnet, free_port(), "miner"),
                        "--neuron.weights", str(weights)], cwd=tmp_path, env=subnet.env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 2, r.stderr
    (error,) = [line for line in r.stderr.splitlines() if "| ERROR" in line]
    assert f"weights {weights} is not a checkpoint" in error and "expected" in error
    assert "Traceback" not in r.stderr and "weights_only" not in r.stderr


def test_without_an_env_file_the_miner_says_where_it_looked_and_the_defaults_it_runs_with(tmp_path):
    port = free_port()
    r = node("miner", *no_wallet(tmp_path), cwd=tmp_path, AXON_IP="127.0.0.1", AXON_PORT=str(port))
    assert r.returncode == 2, r.stderr  # then it stops at the missing hotkey
    (warning,) = [line for line in r.stderr.splitlines() if "| WARNING" in line]
    assert f"looked for {tmp_path / '.env.miner'}" in warning
    for said in ("subtensor.network='finney' (default)", "wallet.name='default' (default)",
                 "wallet.hotkey='default' (default)", "axon.ip='127.0.0.1' (environment variable AXON_IP)",
                 f"axon.port={port} (environment variable AXON_PORT)"):
        assert said in warning
    # INFO goes to stdout (pm2's out log), problems to stderr (its error log)
    assert "bitmind-lite miner starting with" in r.stdout and "starting with" not in r.stderr
    assert "cannot load hotkey" in r.stderr and "cannot load hotkey" not in r.stdout

    env_file = tmp_path / ".env.miner"
    env_file.write_text(f"SUBTENSOR_NETWORK=test\nWALLET_NAME=m1\nAXON_IP=127.0.0.1\nAXON_PORT={port}\n")
    r = node("miner", *no_wallet(tmp_path), cwd=tmp_path)
    assert r.returncode == 2 and "looked for" not in r.stderr, r.stderr
    assert f"settings from flags, environment and {env_file}" in r.stdout
    assert f"subtensor.network='test' (SUBTENSOR_NETWORK in {env_file})" in r.stdout


@pytest.mark.parametrize("flags, level", [
    (["--logging.debug"], "DEBUG"),
    (["--logging.trace"], "TRACE"),
    (["--logging.level", "debug"], "DEBUG"),
])
def test_bittensor_logging_flags_are_accepted(tmp_path, flags, level):
    r = node("miner", *flags, "--axon.ip", "127.0.0.1", "--axon.port", str(free_port()), *no_wallet(tmp_path),
             cwd=tmp_path)
    assert r.returncode == 2 and "cannot load hotkey" in r.stderr, r.stderr  # got past the flags
    assert f"--logging.level = '{level}'" in r.stdout


def test_a_bad_environment_variable_is_reported_as_the_variable(tmp_path):
    r = node("miner", *no_wallet(tmp_path), cwd=tmp_path, AXON_PORT="abc")
    assert r.returncode == 2
    assert "environment variable AXON_PORT='abc': Input should be a valid integer" in r.stderr
    assert "--axon.port" not in r.stderr and "Traceback" not in r.stderr
