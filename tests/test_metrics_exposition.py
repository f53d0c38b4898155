"""Prometheus exposition through prometheus_client: one `bitmind_` prefix, process metrics, a registry per node;
the API schema and docs off on the public port by default; /metrics optionally on its own address.

A real miner process on 127.0.0.1 for the separate metrics address, in-process miners (real sockets, real signed
requests) for the public-port cases, and the parser Prometheus itself uses (prometheus_client.parser).
"""
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bitmind_lite.config import MinerConfig, load_config
from bitmind_lite.detectors import create_detector
from bitmind_lite.miner.metrics import MinerMetrics
from bitmind_lite.validator.telemetry import ValidatorMetrics
from miner_support import (SIZE, body_of, free_port, in_process_miner, keypair, post,  # noqa: F401 (subnet)
                           sample_image, start_miner, stop, subnet, wait_for)

API_DOCS = ("/openapi.json", "/docs", "/redoc")
PROCESS_METRICS = ("bitmind_process_cpu_seconds", "bitmind_process_resident_memory_bytes",
                   "bitmind_process_open_fds", "bitmind_python_info")


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def assert_well_formed(found: dict) -> None:
    """Every family and sample carries the one prefix, and the process's own metrics are there."""
    names = set(found) | {s.name for f in found.values() for s in f.samples}
    unprefixed = sorted(n for n in names if not n.startswith("bitmind_"))
    assert names and not unprefixed, unprefixed
    assert all(n in found for n in PROCESS_METRICS), sorted(found)
    assert found["bitmind_process_cpu_seconds"].type == "counter"
    assert found["bitmind_process_resident_memory_bytes"].samples[0].value > 0


def detect_count(found: dict, status: str) -> float:
    requests = found.get("bitmind_miner_requests")
    return sum(s.value for s in requests.samples if s.labels.get("status") == status) if requests else 0.0


def scrape_until(url: str, condition, what: str, **kw) -> dict:
    """The first scrape of `url` that satisfies `condition` (a request is counted once its answer has been sent, so a
    scrape right after the answer may come too early)."""
    def scrape():
        found = families(httpx.get(url, timeout=10).text)
        return found if condition(found) else None
    return wait_for(scrape, 30, what, **kw)


def test_a_miner_process_serves_metrics_on_its_own_address_and_nothing_extra_on_the_public_port(subnet):
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    node = start_miner(subnet, "miner", "--neuron.detector", "npr", "--neuron.input_size", str(SIZE),
                       "--neuron.metrics_address", f"127.0.0.1:{metrics_port}")
    try:
        for path in ("/metrics", *API_DOCS):
            r = httpx.get(node.url + path, timeout=10)
            assert r.status_code == 404, (path, r.status_code)
        r = httpx.get(metrics_url, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        before = families(r.text)
        assert_well_formed(before)
        assert before["bitmind_miner_request_seconds"].type == "histogram"
        assert before["bitmind_miner_detector_info"].samples[0].labels["detector"] == "npr"

        answer = post(node, keypair("Alice"), body_of(sample_image(1)))
        assert answer.status_code == 200, answer.text
        after = scrape_until(metrics_url, lambda f: detect_count(f, "200") > detect_count(before, "200"),
                             "the request counted", proc=node.proc, log=node.log)
        assert detect_count(after, "200") == detect_count(before, "200") + 1
        latency = {s.name: s.value for s in after["bitmind_miner_request_seconds"].samples}
        assert latency["bitmind_miner_request_seconds_count"] >= 1
    finally:
        stop(node)


def test_public_port_metrics_and_api_docs_only_when_enabled(subnet):
    with in_process_miner(subnet, create_detector("random", device="cpu")) as default, \
            in_process_miner(subnet, create_detector("random", device="cpu"), openapi=True) as docs:
        for path in API_DOCS:
            assert httpx.get(default.url + path, timeout=10).status_code == 404, path
            assert httpx.get(docs.url + path, timeout=10).status_code == 200, path
        assert "/v1/detect" in httpx.get(docs.url + "/openapi.json", timeout=10).json()["paths"]
        post(default, keypair("Alice"), body_of(sample_image(2))).raise_for_status()
        # two nodes in one process: each scrape shows its own node's series only
        seen = scrape_until(default.url + "/metrics", lambda f: detect_count(f, "200") == 1, "the request counted")
        assert_well_formed(seen)
        assert detect_count(families(httpx.get(docs.url + "/metrics", timeout=10).text), "200") == 0


def test_every_node_has_its_own_registry_with_process_metrics():
    miners, validators = (MinerMetrics(), MinerMetrics()), (ValidatorMetrics(), ValidatorMetrics())
    miners[0].observe_request(200, 0.01)
    validators[0].round_seconds.observe(1.5)
    validators[0].observe_scores({3: ("5Hotkey", 0.25)})
    for node in (*miners, *validators):
        assert_well_formed(families(node.render()))
    assert detect_count(families(miners[0].render()), "200") == 1
    assert detect_count(families(miners[1].render()), "200") == 0
    first, second = (families(v.render()) for v in validators)
    count = {s.name: s.value for s in first["bitmind_validator_round_seconds"].samples}
    assert count["bitmind_validator_round_seconds_count"] == 1
    assert [s.labels for s in first["bitmind_validator_miner_score"].samples] == [{"uid": "3", "hotkey": "5Hotkey"}]
    assert second["bitmind_validator_miner_score"].samples == []


def test_the_metrics_address_must_be_host_and_port(capsys):
    cfg = load_config(MinerConfig, ["--neuron.metrics_address", "127.0.0.1:9100"], env={})
    assert cfg.neuron.metrics_address == "127.0.0.1:9100" and not cfg.neuron.openapi
    with pytest.raises(SystemExit) as exit_:
        load_config(MinerConfig, ["--neuron.metrics_address", "9100"], env={})
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--neuron.metrics_address '9100'" in err and "expected HOST:PORT" in err, err
