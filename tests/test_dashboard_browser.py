"""The dashboard page in a real headless Chromium, served by a running validator process (devnet, fake miners):
the leaderboard is filled and Chart.js draws the charts. Skipped only where no Chromium is installed
(setup/install.sh installs it under CI)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from bitmind_lite.localnet import free_port
from bitmind_lite.validator.run import state_paths

sys.path.insert(0, str(Path(__file__).parent))
from test_validator_loop import NETUID, ROOT, Net  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium; "
                                                          "setup/install.sh installs it when CI is set)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=15000"]  # lets the page's fetches and Chart.js finish before the dump
CHARTS = ("score-chart", "weight-chart", "family-chart", "latency-chart", "round-chart")


def chromium(*args) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: nothing cached from an earlier run
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120)


class Page(HTMLParser):
    """Rows of each table's body (cell texts) and the data-rendered mark of each canvas, from the rendered DOM."""

    def __init__(self, html: str):
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.canvases: dict[str, str] = {}
        self._table = self._row = None
        self._in_body = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id")
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
            self.rows.setdefault(self._table, []).append(self._row)
        elif tag == "td" and self._row is not None:
            self._row.append("")
        elif tag == "canvas":
            self.canvases[attrs.get("id")] = attrs.get("data-rendered")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body, self._row = False, None

    def handle_data(self, data):
        if self._row:
            self._row[-1] += data


def test_the_page_shows_the_leaderboard_and_draws_its_charts(tmp_path, monkeypatch):
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "symbols.json"))
    net = Net(tmp_path, ["ok:0.9", "random", "nan"])
    cfg = net.config()
    _, log = state_paths(cfg)
    port = free_port()
    cmd = [sys.executable, str(ROOT / "neurons" / "validator.py"), "--netuid", str(NETUID),
           "--subtensor.network", f"devnet:{net.db}", "--wallet.name", "vali", "--wallet.path", str(net.wallets),
           "--neuron.state_dir", cfg.neuron.state_dir, "--neuron.challenge_interval", "0.2", "--neuron.timeout", "3",
           "--neuron.epoch_length", "2", "--neuron.min_valid", "1", "--neuron.seed", "5", "--neuron.cache", "false",
           "--neuron.fake", "procedural", "--logging.level", "WARNING",
           "--neuron.dashboard_address", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)
    try:
        deadline = time.time() + 90
        while not (log.exists() and len(log.read_text().splitlines()) >= 6):
            assert proc.poll() is None and time.time() < deadline, "validator did not run"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/"
        dom = chromium("--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = tmp_path / "dashboard.png"
        assert chromium("--window-size=1400,2200", f"--screenshot={shot}", url).returncode == 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the validator finishes its round, closes the dashboard and exits 0
        code = proc.wait(30)
        net.close()
    assert code == 0
    page = Page(dom.stdout)
    board = page.rows.get("leaderboard", [])
    uids = {int(row[0]) for row in board}
    assert set(net.uids) <= uids, dom.stdout[:3000]  # every miner, and the idle validator uid, has a row
    honest = next(row for row in board if int(row[0]) == net.uids[0])
    valid, answers = map(int, honest[7].split(" / "))
    assert honest[2] == "fake" and 0 < valid == answers <= len(log.read_text().splitlines())
    for chart in CHARTS:  # set by the page's Chart.js plugin once the chart is drawn: the number of points
        assert page.canvases.get(chart) and int(page.canvases[chart]) > 0, (chart, page.canvases)
    assert len(page.rows.get("challenges", [])) >= 6
    nan = [row for row in page.rows.get("invalid", []) if "not a finite number" in row[0]]
    assert len(nan) == 1 and nan[0][2].startswith(f"{net.uids[2]} (")  # the miner that answers NaN, and how often
    assert re.search(r'<p id="error"[^>]*\bhidden\b', dom.stdout), "the page reported an error"
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2200) and len(image.getcolors(1 << 20) or range(1 << 20)) > 50  # not a blank page
