"""A miner's life on the devnet: endpoint publishing, chain outage, deregistration and SIGTERM (a real process);
model errors, timeouts and a full queue (in-process server, scripted detector); running under pm2, and stopping
there (not restart-looping) after a configuration error.
"""
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import pytest
import torch

from bitmind_lite.detectors import Detector
from bitmind_lite.protocol import DETECT_PATH
from miner_support import (ROOT, body_of, free_port, in_process_miner, keypair, log_text, metric, post, refused,  # noqa: F401
                           sample_image, sign, start_miner, stop, subnet, wait_for)


def test_lifecycle_publish_outage_deregistration_and_graceful_stop(subnet):
    node = start_miner(subnet, "miner2", "--neuron.detector", "random", "--neuron.sync_interval", "0.5",
                       "--axon.external_ip", "127.0.0.1")
    try:
        me = next(n for n in subnet.devnet.neurons() if n["hotkey"] == node.hotkey)
        assert me["endpoint"] == f"127.0.0.1:{node.port}"  # published with ServeAxon at start

        # The chain goes away: refreshes fail in the background, requests are still answered at once.
        subnet.devnet.set_available(False)
        try:
            wait_for(lambda: metric(node, 'bitmind_miner_metagraph_syncs_total{result="error"}') >= 1, 30, "a failed sync",
                     node.proc, node.log)
            slowest = 0.0
            for i in range(8):
                start = time.perf_counter()
                assert post(node, keypair("Alice"), body_of(sample_image(i))).status_code == 200
                slowest = max(slowest, time.perf_counter() - start)
                time.sleep(0.1)
            assert slowest < 0.5  # a refresh retries for ~0.75 s; no request waited for it
        finally:
            subnet.devnet.set_available(True)

        # The miner's uid goes to someone else: noticed at the next refresh and logged loudly.
        subnet.devnet.register(keypair("Newcomer").ss58_address, replace_uid=subnet.uids["miner2"])
        wait_for(lambda: httpx.get(node.url + "/health").json()["uid"] is None, 30, "the deregistration",
                 node.proc, node.log)
        assert "was DEREGISTERED from subnet 1" in log_text(node.log)

        # SIGTERM while a request is half-sent: the listener closes, the request still gets its answer, exit 0.
        body = body_of(sample_image(9))
        headers = {**sign(keypair("Alice"), body, node.hotkey), "Content-Length": str(len(body))}
        first_half_sent, release, result = threading.Event(), threading.Event(), {}

        def slow_body():
            yield body[: len(body) // 2]
            first_half_sent.set()
            release.wait(20)
            yield body[len(body) // 2:]

        def call():
            result["response"] = httpx.post(node.url + DETECT_PATH, content=slow_body(), headers=headers, timeout=30)

        caller = threading.Thread(target=call)
        caller.start()
        assert first_half_sent.wait(20)
        time.sleep(0.3)
        node.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(node.port), 10, "the listener to close")
        release.set()
        caller.join(30)
        assert result["response"].status_code == 200, result["response"].text
        assert node.proc.wait(20) == 0
        assert "miner stopped" in log_text(node.log)
    finally:
        stop(node)


# ---------------------------------------------------------------- model error, timeout, full queue (in-process)
class Scripted(Detector):
    name, version = "scripted", "1"

    def __init__(self):
        super().__init__(device="cpu", input_size=32)
        self.mode = "ok"

    def predict(self, batch):
        if self.mode == "fail":
            raise RuntimeError("boom")
        if self.mode == "slow":
            time.sleep(1.5)
        return torch.full((batch.shape[0],), 0.25)


def test_model_error_timeout_and_full_queue(subnet, monkeypatch):
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(subnet.root / "symbols.json"))
    detector = Scripted()
    with in_process_miner(subnet, detector, request_timeout=0.5, max_batch_size=1, queue_size=1) as node:
        body = body_of(sample_image(11))
        detector.mode = "fail"
        r = post(node, keypair("Alice"), body)
        assert r.status_code == 500 and r.json()["detail"] == "model error: RuntimeError: boom"
        detector.mode = "slow"
        r = post(node, keypair("Alice"), body)
        assert r.status_code == 504 and r.json()["detail"] == "inference timed out after 0.5s"

        async def overload():
            async with httpx.AsyncClient(timeout=30) as client:
                def call(i):
                    return client.post(node.url + DETECT_PATH, content=body,
                                       headers=sign(keypair(f"V{i}"), body, node.hotkey))
                running = asyncio.ensure_future(call(0))
                await asyncio.sleep(0.3)  # the model is busy with it for 1.5 s
                return await asyncio.gather(running, call(1), call(2))  # the queue (size 1) has room for one

        time.sleep(1.5)  # let the model thread finish the timed-out request
        responses = asyncio.run(overload())
        # V1 (stake 101) loses its place to V2 (stake 102), whichever arrived first; the others time out.
        assert [r.status_code for r in responses] == [504, 503, 504]
        assert responses[1].headers["Retry-After"] == "1"
        assert responses[1].json()["detail"] in ("displaced by a higher-stake request",
                                                 "the miner is busy (1 requests queued)")
        time.sleep(1.5)
        detector.mode = "ok"
        r = post(node, keypair("Alice"), body)
        assert r.status_code == 200 and r.json() == {"prediction": 0.25, "detector": "scripted", "version": "1"}


# ---------------------------------------------------------------- pm2
@pytest.fixture
def pm2(subnet):
    """`pm2(*args, **env)` against a private pm2 daemon; `pm2.env(name, port)` is a miner's settings for it."""
    if shutil.which("pm2") is None:
        pytest.skip("pm2 is not installed (npm install -g pm2)")
    pm2_home = tempfile.mkdtemp(prefix="pm2-")  # short path (pm2 puts unix sockets here) and a private daemon

    def run(*args, env=None):
        return subprocess.run(["pm2", *args], env={**subnet.env, "PM2_HOME": pm2_home, **(env or {})}, cwd=ROOT,
                              capture_output=True, text=True, timeout=60)

    def miner_env(name, port):
        return {"BITMIND_MINER_NAME": name, "BITMIND_PYTHON": sys.executable, "NETUID": "1",
                "SUBTENSOR_NETWORK": f"devnet:{subnet.db}", "WALLET_NAME": "miner", "WALLET_HOTKEY": "default",
                "WALLET_PATH": str(subnet.wallets), "AXON_IP": "127.0.0.1", "AXON_PORT": str(port),
                "NEURON_DETECTOR": "random", "NEURON_DEVICE": "cpu"}

    run.env = miner_env
    try:
        yield run
    finally:
        run("kill")
        shutil.rmtree(pm2_home, ignore_errors=True)


def _pm2_app(pm2, name):
    return next((a for a in json.loads(pm2("jlist").stdout) if a["name"] == name), None)


def test_runs_under_pm2_from_the_ecosystem_file(subnet, pm2):
    port, name = free_port(), f"bitmind-miner-test-{os.getpid()}"
    env = pm2.env(name, port)
    url = f"http://127.0.0.1:{port}/health"
    started = pm2("start", "setup/ecosystem.config.js", "--only", name, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    logs = lambda: pm2("logs", name, "--nostream", "--lines", "50").stdout  # noqa: E731
    health = wait_for(lambda: httpx.get(url, timeout=2).json(), 90, "/health under pm2")
    assert health["detector"] == "random" and health["hotkey"] == subnet.hotkey, logs()
    app = _pm2_app(pm2, name)
    assert app["pm2_env"]["status"] == "online" and app["pm2_env"]["restart_time"] == 0
    # INFO lines land in pm2's out log, not in its error log
    out, err = (open(app["pm2_env"][k]).read() for k in ("pm_out_log_path", "pm_err_log_path"))
    assert f"starting HTTP on http://127.0.0.1:{port}" in out and "starting HTTP" not in err
    assert pm2("delete", name).returncode == 0
    wait_for(lambda: refused(port), 20, "the miner to stop")
    assert all(a["name"] != name for a in json.loads(pm2("jlist").stdout))


def test_under_pm2_a_config_error_leaves_the_app_stopped(subnet, pm2):
    """Exit status 2 (here: the port is taken) is `stop_exit_codes`: pm2 shows the app stopped, no restart loop
    and no "waiting restart" forever."""
    name = f"bitmind-miner-bad-{os.getpid()}"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = pm2("start", "setup/ecosystem.config.js", "--only", name, env=pm2.env(name, port))
        assert started.returncode == 0, started.stdout + started.stderr

        def exited():
            app = _pm2_app(pm2, name)
            return app if app and app["pm2_env"]["status"] not in ("online", "launching") else None

        app = wait_for(exited, 90, "the miner to exit under pm2")
    assert app["pm2_env"].get("exit_code") == 2, app["pm2_env"]
    assert app["pm2_env"]["status"] == "stopped" and app["pm2_env"]["restart_time"] == 0
    err = open(app["pm2_env"]["pm_err_log_path"]).read()
    assert f"127.0.0.1:{port} is already in use" in err and "Traceback" not in err
