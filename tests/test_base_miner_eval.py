"""base_miner/test.py and calibration: the paper's metrics, real-only folders, sidecar calibration, bundled weights."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, matthews_corrcoef, roc_auc_score

from base_miner import test as npr_test
from base_miner.calibrate import fit_platt
from base_miner.metrics import binary_metrics, mean_row, validator_reward
from base_miner.toydata import make_toy_dataset, toy_checkpoint
from bitmind_lite.detectors import create_detector
from bitmind_lite.detectors.base import Calibration, calibration_path, save_calibration, weights_fingerprint
from bitmind_lite.detectors.registry import default_weights

ROOT = Path(__file__).resolve().parents[1]


def test_metrics_equal_scikit_learn_on_a_fixed_prediction_set():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.5, 0.9, 0.55, 0.3, 0.8, 0.51, 0.2])
    m = binary_metrics(y, p)
    assert m["acc"] == accuracy_score(y, p > 0.5) == 0.7  # 0.5 itself is "real", as in the reference (p > 0.5)
    assert m["ap"] == pytest.approx(average_precision_score(y, p))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, p > 0.5))
    assert m["brier"] == pytest.approx(brier_score_loss(y, p))
    assert (m["r_acc"], m["f_acc"], m["n_real"], m["n_fake"]) == (0.75, 4 / 6, 4, 6)
    real_only = binary_metrics([0, 0, 0], [0.2, 0.7, 0.9])
    assert real_only["r_acc"] == pytest.approx(1 / 3)
    assert all(real_only[k] is None for k in ("ap", "auc", "mcc", "reward", "f_acc"))
    mean = mean_row({"g1": m, "g2": binary_metrics(y, 1 - p), "holdout": real_only})
    assert mean["acc"] == pytest.approx((0.7 + binary_metrics(y, 1 - p)["acc"]) / 2)  # real-only folder left out
    assert mean["folders"] == 2 and mean["n_real"] == 8
    with pytest.raises(ValueError):
        binary_metrics([0, 1], [0.3])


def test_reward_column_is_the_validators_own_reward():
    y = np.array([0, 1] * 100)
    assert validator_reward(y, y.astype(float)) == pytest.approx(1.0)  # right and certain: the full reward
    assert validator_reward(y, 1.0 - y) == 0.0  # always wrong: MCC -1, Brier 1 -> nothing
    unsure = validator_reward(y, np.full(y.size, 0.5))  # all called real: MCC 0, acc ~.5, Brier .25
    assert 0.08 < unsure < 0.17
    confident = np.where(y == 1, 0.9, 0.1)
    shy = np.where(y == 1, 0.6, 0.4)  # the same calls, less certain: worse Brier, less reward
    assert validator_reward(y, confident) > validator_reward(y, shy) > 0
    # the validator's function on one window of these answers gives the same number as one window here
    from bitmind_lite.validator.reward import History, metrics

    assert metrics(History(zip(confident[:100].tolist(), y[:100].tolist()))).reward == pytest.approx(
        validator_reward(y[:100], confident[:100], windows=64), rel=1e-9)


def test_test_py_reports_every_metric_per_family_and_keeps_real_only_folders_out_of_the_mean(tmp_path, capsys):
    data = make_toy_dataset(tmp_path / "data", n_per_class=6, size=48, seed=2, classes=("gan_a", "gan_b"),
                            splits=("test",)) / "test"
    real_only = data / "holdout" / "0_real"
    real_only.mkdir(parents=True)
    for i, img in enumerate(sorted((data / "gan_a" / "0_real").iterdir())[:4]):
        img.rename(real_only / f"{i}.png")
    ckpt = toy_checkpoint(tmp_path / "net.pth")
    out, plot = tmp_path / "res.json", tmp_path / "curves.png"
    rc = npr_test.main(["--model_path", str(ckpt), "--dataroot", str(data), "--batch_size", "5", "--input_size", "48",
                        "--device", "cpu", "--json", str(out), "--plot", str(plot), "--jpeg", "75", "--blur", "1.5",
                        "--quiet"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert set(res["rows"]) == {"gan_a", "gan_b", "holdout"} and res["version"] == weights_fingerprint(ckpt)
    for name, row in res["rows"].items():
        y, p = np.array(res["scores"][name]["y"]), np.array(res["scores"][name]["p"])
        assert row["acc"] == pytest.approx(accuracy_score(y, p > 0.5))
        assert row["brier"] == pytest.approx(brier_score_loss(y, p, labels=[0, 1]), abs=1e-5)
        if name == "holdout":
            assert row["ap"] is None and row["mcc"] is None and row["n_fake"] == 0 and row["n_real"] == 4
        else:
            assert row["ap"] == pytest.approx(average_precision_score(y, p), abs=1e-6)
            assert row["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
            assert row["mcc"] == pytest.approx(matthews_corrcoef(y, p > 0.5))
            assert 0 <= row["reward"] <= 1
    two = [res["rows"][k] for k in ("gan_a", "gan_b")]
    for key in ("acc", "ap", "auc", "mcc", "brier", "reward"):
        assert res["mean"][key] == pytest.approx(np.mean([r[key] for r in two]))  # holdout not in the mean
    assert res["real_only"] == {"holdout": {"real_acc": res["rows"]["holdout"]["r_acc"], "n_real": 4}}
    assert set(res["jpeg"]) == {"75"} and set(res["jpeg"]["75"]["rows"]) == set(res["rows"])
    assert res["jpeg"]["75"]["scores"]["gan_b"]["p"] != res["scores"]["gan_b"]["p"]  # really re-encoded
    assert set(res["blur"]) == {"1.5"} and set(res["blur"]["1.5"]["rows"]) == set(res["rows"])
    assert res["blur"]["1.5"]["scores"]["gan_b"]["p"] != res["scores"]["gan_b"]["p"]  # really blurred
    # the scores are the detector's own predictions on those files
    det = create_detector("npr", weights=ckpt, device="cpu", input_size=48)
    from PIL import Image
    first = sorted((data / "gan_b" / "0_real").iterdir())[0]
    assert res["scores"]["gan_b"]["p"][0] == pytest.approx(det.predict_images([Image.open(first)])[0], abs=1e-5)
    table = capsys.readouterr().out
    assert "holdout" in table and "real images called real" in table and "MCC" in table and "JPEG quality 75" in table
    assert plot.stat().st_size > 1000
    # --classes picks folders; train.py's meta sidecar (stamped with the fingerprint) is reported
    (tmp_path / "net.meta.json").write_text(json.dumps({"weights": weights_fingerprint(ckpt), "epoch": 2,
                                                        "train_classes": ["gan_a"]}))
    assert npr_test.main(["--model_path", str(ckpt), "--dataroot", str(data), "--classes", "gan_b", "--input_size",
                          "48", "--device", "cpu", "--json", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert set(res["rows"]) == {"gan_b"} and res["checkpoint"]["epoch"] == 2
    assert "(epoch 3, trained on gan_a)" in capsys.readouterr().out


def test_test_py_cli_from_base_miner_reports_bad_input(tmp_path):
    proc = subprocess.run([sys.executable, "test.py", "--model_path", str(tmp_path / "missing.pth"), "--dataroot",
                           str(tmp_path)], cwd=ROOT / "base_miner", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "weights file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_calibration_sidecar_is_applied_checked_against_the_weights_and_reloaded(tmp_path):
    a, b = toy_checkpoint(tmp_path / "a.pth", 0), toy_checkpoint(tmp_path / "b.pth", 1)
    x = torch.randn(3, 3, 64, 64)
    raw = create_detector("npr", weights=a, device="cpu", input_size=64)
    logits = raw.logits(x)
    save_calibration(a, Calibration(scale=0.5, bias=-1.0, weights=weights_fingerprint(a)))
    cal = create_detector("npr", weights=a, device="cpu", input_size=64)
    assert cal.calibration.threshold_logit == pytest.approx(2.0)
    assert torch.allclose(cal.predict(x), torch.sigmoid(0.5 * logits - 1.0), atol=1e-6)
    assert torch.allclose(create_detector("npr", weights=a, device="cpu", input_size=64, calibrate=False).predict(x),
                          torch.sigmoid(logits), atol=1e-6)
    # a sidecar fitted for other weights is ignored, never applied to the wrong network
    calibration_path(b).write_text(calibration_path(a).read_text())
    assert create_detector("npr", weights=b, device="cpu", input_size=64).calibration is None
    # reload brings the new checkpoint's own calibration (here: none) together with its weights
    cal.reload(b)
    assert cal.calibration is None and cal.version == weights_fingerprint(b)
    # a corrupt sidecar is a clear error, and a failed reload keeps serving the old pair
    calibration_path(a).write_text("{not json")
    with pytest.raises(ValueError, match="not a calibration file"):
        cal.reload(a)
    assert cal.version == weights_fingerprint(b)


def test_platt_fit_moves_the_threshold_of_a_fake_biased_detector():
    rng = np.random.default_rng(0)
    real_logits, fake_logits = rng.normal(1.0, 0.7, 300), rng.normal(4.0, 0.7, 300)  # reals mostly called fake
    z = np.concatenate([real_logits, fake_logits])
    y = np.array([0] * 300 + [1] * 300)
    before = binary_metrics(y, 1 / (1 + np.exp(-z)))
    scale, bias = fit_platt(z, y)
    after = binary_metrics(y, 1 / (1 + np.exp(-(scale * z + bias))))
    assert before["r_acc"] < 0.2 and after["r_acc"] > 0.9 and after["f_acc"] > 0.9
    assert 2.0 < -bias / scale < 3.0  # the new decision point sits between the two classes
    with pytest.raises(ValueError, match="real and fake"):
        fit_platt(real_logits, np.zeros(300, dtype=int))


@pytest.mark.skipif(default_weights("npr") is None, reason="no bundled weights/npr.pth")
def test_bundled_weights_load_and_beat_chance_on_freshly_sampled_challenges():
    from bitmind_lite.data import ChallengeSampler

    det = create_detector("npr", device="cpu")
    assert det.version == weights_fingerprint(default_weights("npr"))
    sampler = ChallengeSampler(real="bundled", fake="procedural", level_probs={0: 0.5, 1: 0.5}, seed=12345)
    rng = np.random.default_rng(12345)  # a seed no dataset build used
    images, labels = zip(*[sampler.sample(rng)[:2] for _ in range(48)])
    p = np.array(det.predict_images(list(images)))
    m = binary_metrics(np.array(labels), p)
    assert m["ap"] > 0.75 and m["acc"] > 0.6, m
