"""Shared by the miner tests: a devnet subnet with validators, miner processes, signing and polling helpers.

Real everything: bittensor keypairs sign btauth/1 requests, the devnet chain holds the metagraph, and miners run as
`neurons/miner.py` processes on 127.0.0.1 (or, where a test needs a scripted detector, as an in-process uvicorn
server on a real socket: `in_process_miner`).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from bittensor import http_auth
from bittensor.sp_core import CRYPTO_ED25519, Keypair
from PIL import Image

from bitmind_lite.chain import Chain, Devnet, connect, create_wallet
from bitmind_lite.config import MinerConfig
from bitmind_lite.detectors import NPRNet, create_detector
from bitmind_lite.detectors.base import weights_fingerprint
from bitmind_lite.miner import MinerService, create_app
from bitmind_lite.protocol import DETECT_PATH, decode_image, encode_image

ROOT = Path(__file__).resolve().parents[1]
SIZE, MIN_STAKE, RATE_LIMIT = 64, 10, 30
# name -> (stake, validator permit). Bob stays unregistered. Each test group signs with its own hotkeys, so the
# per-caller rate limit of one group never leaks into another.
VALIDATORS = {"Alice": (1000, True), "Charlie": (1000, False), "Dave": (1, True), "Eve": (1000, True),
              "Ferdie": (1000, True), **{f"V{i}": (100 + i, True) for i in range(8)}}
ED25519 = Keypair.create_from_uri("//Alice", crypto_type=CRYPTO_ED25519)  # registered: refused for its scheme only


def keypair(name: str) -> Keypair:
    return Keypair.create_from_uri(f"//{name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_weights(path: Path, seed: int) -> str:
    """A random NPR net with a steeper head, so different images get tellably different answers. Atomic write."""
    torch.manual_seed(seed)
    net = NPRNet(use_npr=True)
    with torch.no_grad():
        net.fc1.weight.mul_(3)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return weights_fingerprint(path)


def sample_image(seed: int) -> str:
    """Bilinear-up-sampled noise as base64 PNG: each seed leaves its own neighbouring-pixel pattern for NPR."""
    small = np.random.default_rng(seed).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    return encode_image(Image.fromarray(small).resize((72, 80), Image.BILINEAR))


def expected(weights: Path, images: list[str]) -> list[float]:
    detector = create_detector("npr", weights=weights, device="cpu", input_size=SIZE)
    return [detector.predict_images([decode_image(b64)])[0] for b64 in images]


def body_of(image_b64: str) -> bytes:
    return json.dumps({"image": image_b64}).encode()


def sign(signer, body: bytes, receiver: str, path: str = DETECT_PATH, **kw) -> dict:
    return http_auth.sign(signer, method="POST", path=path, body=body, receiver_ss58=receiver, **kw)


def post(node, signer, body: bytes, **kw) -> httpx.Response:
    headers = sign(signer, body, node.hotkey, **kw)
    return httpx.post(node.url + DETECT_PATH, content=body, headers=headers, timeout=60)


def metric(node, sample: str) -> float:
    """The value of one sample line of /metrics (0 when absent)."""
    for line in httpx.get(node.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for(condition, timeout: float, what: str, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"miner exited with {proc.returncode} while waiting for {what}:\n{log_text(log)}")
        try:
            value = condition()
            if value:
                return value
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}\n{log_text(log)}")


def log_text(log) -> str:
    return Path(log).read_text()[-5000:] if log and Path(log).exists() else ""


@pytest.fixture(scope="module")
def subnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("miner")
    devnet = Devnet.create(root / "dev.db", netuid=1)
    wallets = {name: create_wallet(name, "default", str(root / "wallets")).hotkey.ss58_address
               for name in ("miner", "miner2")}  # miner2: the process whose deregistration a test provokes
    uids = {name: devnet.register(hotkey) for name, hotkey in wallets.items()}
    for name, (stake, permit) in VALIDATORS.items():
        devnet.register(keypair(name).ss58_address, stake=stake, validator_permit=permit)
    devnet.register(ED25519.ss58_address, stake=1000, validator_permit=True)
    env = {**os.environ, "BTCLI_TOKEN_SYMBOLS_CACHE": str(root / "symbols.json"), "PYTHONUNBUFFERED": "1"}
    return SimpleNamespace(root=root, devnet=devnet, db=root / "dev.db", wallets=root / "wallets", env=env,
                           hotkeys=wallets, uids=uids, hotkey=wallets["miner"], uid=uids["miner"])


def miner_flags(subnet, port: int, wallet: str) -> list[str]:
    return ["--netuid", "1", "--subtensor.network", f"devnet:{subnet.db}", "--wallet.name", wallet,
            "--wallet.hotkey", "default", "--wallet.path", str(subnet.wallets), "--axon.ip", "127.0.0.1",
            "--axon.port", str(port), "--neuron.device", "cpu", "--neuron.threads", "1"]


def start_miner(subnet, wallet: str, *flags: str) -> SimpleNamespace:
    port, log = free_port(), subnet.root / f"{wallet}.log"
    with open(log, "wb") as out:  # cwd is the temp dir, so no developer .env.miner leaks in
        proc = subprocess.Popen([sys.executable, str(ROOT / "neurons" / "miner.py"), *miner_flags(subnet, port, wallet),
                                 *flags], cwd=subnet.root, env=subnet.env, stdout=out, stderr=subprocess.STDOUT)
    node = SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, proc=proc, log=log,
                           hotkey=subnet.hotkeys[wallet])
    wait_for(lambda: httpx.get(node.url + "/health", timeout=2).status_code == 200, 90, "/health", proc, log)
    return node


def stop(node) -> None:
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(15)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()



@contextmanager
def in_process_miner(subnet, detector, **neuron):
    """A MinerService with `detector` behind uvicorn on 127.0.0.1, in a thread; `neuron` overrides config."""
    cfg = MinerConfig.model_validate({"netuid": 1, "neuron": neuron})
    service = MinerService(cfg, subnet.hotkey, detector, Chain(connect(f"devnet:{subnet.db}"), netuid=1))
    assert service.sync()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    node = SimpleNamespace(url=f"http://127.0.0.1:{sock.getsockname()[1]}", hotkey=subnet.hotkey, service=service)
    try:
        wait_for(lambda: server.started, 30, "the in-process server")
        yield node
    finally:
        server.should_exit = True
        thread.join(30)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
