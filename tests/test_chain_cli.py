"""`bitmind-lite devnet ...` and `bitmind-lite wallet ...`, run as a user would."""
import json
import shutil
import subprocess
import sys

import pytest

from bitmind_lite.chain import Chain, Devnet, WalletError, connect, create_wallet, load_wallet
from bitmind_lite.cli import main


@pytest.fixture(autouse=True)
def symbols_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "token_symbols.json"))


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_wallet_create_makes_loadable_keys_without_a_prompt(tmp_path, capsys):
    wallets = str(tmp_path / "wallets")
    code, out, _ = run(capsys, "wallet", "create", "--name", "vali", "--hotkey", "hk", "--path", wallets)
    assert code == 0
    wallet = load_wallet("vali", "hk", wallets)
    assert wallet.hotkey.ss58_address in out and wallet.coldkeypub.ss58_address in out
    assert run(capsys, "wallet", "create", "--name", "vali", "--hotkey", "hk", "--path", wallets)[0] == 1
    # a second hotkey under the same coldkey keeps the coldkey
    second = create_wallet("vali", "hk2", wallets)
    assert second.coldkeypub.ss58_address == wallet.coldkeypub.ss58_address
    assert second.hotkey.ss58_address != wallet.hotkey.ss58_address
    code, out, _ = run(capsys, "wallet", "show", "--name", "vali", "--hotkey", "hk2", "--path", wallets)
    assert code == 0 and second.hotkey.ss58_address in out
    code, _, err = run(capsys, "wallet", "show", "--name", "nobody", "--path", wallets)
    assert code == 1 and "bitmind-lite wallet create --name nobody" in err
    with pytest.raises(WalletError, match="not found"):
        load_wallet("nobody", "default", wallets)


def test_devnet_init_register_set_show(tmp_path, capsys):
    db, wallets = str(tmp_path / "dev.db"), str(tmp_path / "wallets")
    vali = create_wallet("vali", "default", wallets)
    miner = create_wallet("miner", "default", wallets)
    assert run(capsys, "devnet", "init", db, "--netuid", "3", "--weights-rate-limit", "5", "--tempo", "50")[0] == 0
    assert Devnet(db).params.weights_rate_limit == 5 and Devnet(db).params.tempo == 50
    code, out, _ = run(capsys, "devnet", "register", db, "--wallet", "vali", "--wallet-path", wallets,
                       "--stake", "1500", "--validator-permit")
    assert code == 0 and "as uid 0" in out
    code, out, _ = run(capsys, "devnet", "register", db, "--hotkey", miner.hotkey.ss58_address)
    assert code == 0 and "as uid 1" in out
    neurons = Devnet(db).neurons()
    assert (neurons[0]["coldkey"], neurons[0]["stake"], neurons[0]["validator_permit"]) == (
        vali.coldkeypub.ss58_address, 1500.0, True)

    chain = Chain(connect(f"devnet:{db}"), 3, miner.hotkey)
    assert chain.serve_axon("127.0.0.1", 8101).ok
    assert Chain(chain.subtensor, 3, vali.hotkey).set_weights({1: 1.0}, 0).ok
    code, out, _ = run(capsys, "devnet", "show", db)
    assert code == 0
    miner_row = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "127.0.0.1:8101" in miner_row and "1.000" in miner_row            # endpoint and incentive
    assert "set_mechanism_weights" in out and "1: 1.000" in out
    code, out, _ = run(capsys, "devnet", "show", db, "--json")
    shown = json.loads(out)
    assert shown["weights"] == {"0": {"1": 1.0}} and shown["neurons"][1]["endpoint"] == "127.0.0.1:8101"

    code, out, _ = run(capsys, "devnet", "set", db, "--offline", "--weights-rate-limit", "2", "--advance", "10")
    assert code == 0 and "OFFLINE" in out and Devnet(db).params.weights_rate_limit == 2
    assert run(capsys, "devnet", "set", db, "--online")[1].count("ONLINE") == 1


def test_devnet_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    db = str(tmp_path / "dev.db")
    code, _, err = run(capsys, "devnet", "show", db)
    assert code == 1 and "does not exist" in err and "devnet init" in err
    assert run(capsys, "devnet", "init", db, "--netuid", "1")[0] == 0
    code, _, err = run(capsys, "devnet", "init", db, "--netuid", "1")
    assert code == 1 and "already exists" in err
    code, _, err = run(capsys, "devnet", "register", db, "--hotkey", "not-an-address")
    assert code == 1 and "not a valid ss58 address" in err
    code, _, err = run(capsys, "devnet", "init", str(tmp_path / "x.db"), "--netuid", "1", "--block-time", "0")
    assert code == 1 and "block_time" in err


def test_console_script_runs_devnet_show(tmp_path):
    Devnet.create(tmp_path / "dev.db", netuid=9)
    exe = shutil.which("bitmind-lite") or f"{sys.executable} -m bitmind_lite.cli"
    r = subprocess.run([*exe.split(), "devnet", "show", str(tmp_path / "dev.db")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "netuid 9" in r.stdout and "no neurons" in r.stdout
