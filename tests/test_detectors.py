"""Registry and detector behaviour: names, probabilities, the no-resize preprocessing rule, devices, and the
checkpoint files (unusable weights, bundled weights from an installed package)."""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bitmind_lite.detectors import NPRNet, create_detector, crop_or_tile, list_detectors, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_bundled_detectors_and_rejects_unknown_names():
    assert {"npr", "npr_raw", "random"} <= set(list_detectors())
    with pytest.raises(ValueError, match="unknown detector 'nope'.*npr"):
        create_detector("nope")


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        create_detector("npr", weights=tmp_path / "missing.pth")


@pytest.mark.parametrize("name", ["npr", "npr_raw", "random"])
def test_predictions_are_probabilities(name, real_photo):
    det = create_detector(name, device="cpu", input_size=64)
    batch = torch.stack([det.preprocess(real_photo), det.preprocess(real_photo.rotate(90, expand=True))])
    batch = torch.cat([batch, torch.randn(2, 3, 64, 64) * 50])  # extreme inputs must still give [0, 1]
    p = det.predict(batch)
    assert p.shape == (4,) and p.dtype == torch.float32
    assert torch.all((p >= 0) & (p <= 1)) and torch.isfinite(p).all()
    assert det.name == name and isinstance(det.version, str) and det.version


def test_npr_and_raw_differ_only_in_input():
    # untrained nets: a trained one saturates at P=1 on noise, which would hide the difference
    npr = create_detector("npr", device="cpu", pretrained=False)
    raw = create_detector("npr_raw", device="cpu", pretrained=False)
    assert [k for k in npr.model.state_dict()] == [k for k in raw.model.state_dict()]
    raw.model.load_state_dict(npr.model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    assert not torch.allclose(npr.predict(x), raw.predict(x))


def test_large_images_are_cropped_not_resized():
    arr = np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8)
    out = crop_or_tile(Image.fromarray(arr), 256)
    assert out.size == (256, 256)
    got = np.asarray(out)
    # the crop is a verbatim window of the original at an even offset (no interpolation touched a pixel)
    top, left = (300 - 256) // 2 & ~1, (410 - 256) // 2 & ~1
    assert top % 2 == 0 and left % 2 == 0
    assert np.array_equal(got, arr[top:top + 256, left:left + 256])


def test_small_images_are_tiled_to_the_model_size():
    arr = np.random.default_rng(1).integers(0, 256, (100, 180, 3), dtype=np.uint8)
    got = np.asarray(crop_or_tile(Image.fromarray(arr), 256))
    assert got.shape == (256, 256, 3)
    assert np.array_equal(got[:100, :180], arr) and np.array_equal(got[100:200, :180], arr)


def test_preprocess_is_imagenet_normalised(real_photo):
    det = create_detector("random", input_size=128)
    x = det.preprocess(real_photo)
    assert x.shape == (3, 128, 128)
    expected = (np.asarray(crop_or_tile(real_photo, 128), dtype=np.float32)[0, 0] / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    assert np.allclose(x[:, 0, 0].numpy(), expected, atol=1e-5)


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_reload_swaps_weights_and_keeps_old_model_on_a_bad_file(tmp_path):
    det = create_detector("npr", device="cpu", input_size=64)
    x = torch.randn(2, 3, 64, 64)
    before = det.predict(x)
    good = tmp_path / "good.pth"
    torch.manual_seed(3)
    torch.save(NPRNet().state_dict(), good)
    det.reload(good)
    assert det.version != "untrained" and not torch.allclose(det.predict(x), before)
    after_good = det.predict(x)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):
        det.reload(bad)
    assert torch.allclose(det.predict(x), after_good)


# ---------------------------------------------------------------- checkpoint files (detectors/checkpoint.py)
def _not_a_checkpoint(kind: str, path):
    """Files an operator passes as weights by mistake."""
    if kind == "text":
        path.write_text("hello, I am a README\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(NPRNet().state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    elif kind == "wrong_shapes":
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    elif kind == "objects":  # a pickle that would have to run code to load
        torch.save({"model": NPRNet().state_dict(), "opt": argparse.Namespace(lr=1)}, path)
    return path


@pytest.mark.parametrize("kind, says", [
    ("text", "not a torch.save file"), ("empty", "empty"), ("truncated", "truncated or corrupt"),
    ("wrong_shapes", "not a checkpoint of NPRNet"), ("objects", "Python objects besides tensors"),
])
def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path, kind, says):
    from bitmind_lite.detectors.checkpoint import CheckpointError

    path = _not_a_checkpoint(kind, tmp_path / f"{kind}.pth")
    with pytest.raises(CheckpointError) as e:
        create_detector("npr", weights=path, device="cpu")
    message = str(e.value)
    assert str(path) in message and says in message and "\n" not in message
    assert "weights_only" not in message and "arbitrary code" not in message  # torch's advice to load unsafely
    assert isinstance(e.value, ValueError)  # callers that catch ValueError (the miner's hot-swap) keep working


def test_a_shape_mismatch_names_the_tensor(tmp_path):
    from bitmind_lite.detectors.checkpoint import CheckpointError, load_into

    state = NPRNet().state_dict()
    state["fc1.weight"] = torch.zeros(1, 256)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"fc1.weight \(1, 256\) != \(1, 512\)"):
        load_into(NPRNet(), tmp_path / "w.pth")


def test_bundled_weights_are_found_from_an_installed_package(tmp_path):
    """An installed wheel has no repository around it: the weights ship as bitmind_lite/weights (setup.py)."""
    site = tmp_path / "site-packages"
    shutil.copytree(ROOT / "bitmind_lite", site / "bitmind_lite", ignore=shutil.ignore_patterns("__pycache__"))
    (site / "bitmind_lite" / "weights").mkdir()
    torch.save(NPRNet().state_dict(), site / "bitmind_lite" / "weights" / "npr.pth")
    code = "import bitmind_lite.detectors as d; print(d.__file__); print(d.create_detector('npr', device='cpu').weights_path)"
    env = {k: v for k, v in os.environ.items() if k != "BITMIND_WEIGHTS_DIR"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    module, weights = r.stdout.split()
    assert module.startswith(str(site)) and weights == str(site / "bitmind_lite" / "weights" / "npr.pth")
