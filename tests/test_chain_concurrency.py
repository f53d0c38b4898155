"""Several processes write to one devnet file at once (as miners, a validator and the admin CLI do): nothing is lost."""
import multiprocessing as mp

from bittensor.sp_core import Keypair

from bitmind_lite.chain import Chain, Devnet, connect

PER_PROCESS = 12


def _writer(path: str, tag: int, barrier, symbols: str) -> None:
    """Register PER_PROCESS hotkeys, each publishing its own endpoint through the real SDK, as fast as possible."""
    import os

    os.environ["BTCLI_TOKEN_SYMBOLS_CACHE"] = symbols
    devnet = Devnet(path)
    subtensor = connect(f"devnet:{path}")
    keys = [Keypair.create_from_uri(f"//writer{tag}/{i}") for i in range(PER_PROCESS)]
    barrier.wait(timeout=60)
    for i, key in enumerate(keys):
        devnet.register(key.ss58_address, stake=tag + i / 100)
        result = Chain(subtensor, 1, key).serve_axon("10.0.0.1", 10000 + tag * 100 + i)
        assert result.ok, result


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(Devnet.create(tmp_path / "shared.db", netuid=1).path)
    ctx = mp.get_context("spawn")  # no fork: the parent may hold bittensor's loop thread
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, tag, barrier, str(tmp_path / "symbols.json")))
             for tag in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    assert [p.exitcode for p in procs] == [0, 0]

    neurons = Devnet(path).neurons()
    assert sorted(n["uid"] for n in neurons) == list(range(2 * PER_PROCESS))      # unique, gap-free uids
    by_hotkey = {n["hotkey"]: n for n in neurons}
    for tag in (1, 2):
        for i in range(PER_PROCESS):
            n = by_hotkey[Keypair.create_from_uri(f"//writer{tag}/{i}").ss58_address]
            assert n["endpoint"] == f"10.0.0.1:{10000 + tag * 100 + i}"
            assert n["stake"] == tag + i / 100
    assert sum(x["ok"] for x in Devnet(path).extrinsics(limit=100)) == 2 * PER_PROCESS
