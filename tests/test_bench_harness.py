"""`bitmind-lite bench`: a detector in this process and a live miner over signed HTTP, on the validator's challenges,
scored by the validator's own reward code. The reference numbers are recomputed here from the answers in the JSON
with validator/reward.py, and the answers themselves from the detector on the same seeded challenges.
"""
import json

import pytest

from bitmind_lite.benchmark import challenges
from bitmind_lite.chain import create_wallet
from bitmind_lite.cli import main as cli
from bitmind_lite.data import ChallengeSampler
from bitmind_lite.detectors import create_detector
from bitmind_lite.validator.reward import History, challenge_reward, metrics
from miner_support import SIZE, in_process_miner, save_weights, subnet  # noqa: F401 (subnet is a fixture)

MIX = ["--families", "nearest,bilinear", "--size", str(SIZE), "--n", "12", "--seed", "3"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "npr.pth"
    save_weights(path, seed=0)
    return path


def bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "bench.json"
    assert cli(["bench", *args, *MIX, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def reference(answers: list[dict]) -> tuple[dict, float]:
    """The validator's reward after these answers, and the mean of its per-challenge rewards."""
    history = History()
    rewards = [challenge_reward(history, a["prediction"], a["label"])[0] for a in answers]
    return metrics(history).as_dict(), sum(rewards) / len(rewards)


def assert_scored_like_the_validator(report: dict) -> None:
    answers = report["answers"]
    final, mean = reference(answers)
    assert report["scores"]["validator"] == final
    assert report["scores"]["mean_reward"] == pytest.approx(mean, abs=1e-12)
    by_family = report["scores"]["by_family"]
    assert sum(g["n"] for g in by_family.values()) == len(answers) == 12
    for family, group in by_family.items():
        mine = [a for a in answers if a["family"] == family]
        right = sum((a["prediction"] > 0.5) == bool(a["label"]) for a in mine)
        assert group["acc"] == pytest.approx(right / len(mine))
    assert set(report["scores"]["by_source"]) <= {"bundled", "procedural"}
    assert 0 < report["scores"]["latency_ms"]["p50"] <= report["scores"]["latency_ms"]["p95"]


def test_a_detector_is_scored_by_the_validators_reward_on_its_own_answers(tmp_path, weights):
    png = tmp_path / "bench.png"
    report = bench(tmp_path, "--detector", "npr", "--weights", str(weights), "--input-size", str(SIZE),
                   "--device", "cpu", "--plot", str(png))
    assert_scored_like_the_validator(report)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the answers are the detector's on the same seeded challenges
    detector = create_detector("npr", weights=weights, device="cpu", input_size=SIZE)
    sampler = ChallengeSampler(fake="nearest,bilinear", size=SIZE, seed=3)
    items = list(challenges(sampler, 12, seed=3))
    assert [a["label"] for a in report["answers"]] == [label for _, label, _, _ in items]
    assert [a["prediction"] for a in report["answers"]] == pytest.approx(
        [detector.predict_images([image])[0] for image, *_ in items], abs=1e-6)


def test_a_live_miner_answers_as_the_detector_does_and_is_scored_the_same_way(tmp_path, weights, subnet):
    vali = create_wallet("benchvali", "default", str(subnet.wallets)).hotkey.ss58_address
    subnet.devnet.register(vali, stake=1000, validator_permit=True)
    create_wallet("stranger", "default", str(subnet.wallets))  # not registered: the miner refuses it
    detector = create_detector("npr", weights=weights, device="cpu", input_size=SIZE)
    local = bench(tmp_path, "--detector", "npr", "--weights", str(weights), "--input-size", str(SIZE),
                  "--device", "cpu")
    with in_process_miner(subnet, detector) as node:
        wallet = ["--wallet.name", "benchvali", "--wallet.path", str(subnet.wallets)]
        live = bench(tmp_path, "--endpoint", node.url, *wallet, "--per-minute", "0")
        refused = cli(["bench", "--endpoint", node.url, "--wallet.name", "stranger", "--wallet.path",
                       str(subnet.wallets), *MIX])
    assert live["target"]["hotkey"] == subnet.hotkey and live["target"]["uid"] == subnet.uid
    assert_scored_like_the_validator(live)
    assert all(a["error"] is None for a in live["answers"])
    assert [a["prediction"] for a in live["answers"]] == pytest.approx(
        [a["prediction"] for a in local["answers"]], abs=1e-5)
    assert refused == 2


@pytest.mark.parametrize("args, message", [
    (["--detector", "nope"], "unknown detector 'nope'"),
    (["--detector", "npr", "--weights", "BAD"], "cannot load detector 'npr'"),
    (["--detector", "npr", "--weights", "MISSING"], "weights file not found"),
    (["--endpoint", "http://127.0.0.1:1"], "cannot reach a miner at http://127.0.0.1:1"),
    (["--detector", "random", "--families", "no_such_family"], "no_such_family"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    args = [{"BAD": str(tmp_path / "bad.pth"), "MISSING": str(tmp_path / "none.pth")}.get(a, a) for a in args]
    assert cli(["bench", *MIX, *args]) == 2  # args last: they override the mix
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("bitmind-lite bench: "), err
