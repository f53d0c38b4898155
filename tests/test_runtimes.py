"""Inference runtimes: each fast path agrees with eager on the same weights, and misuse is a clear error."""
import numpy as np
import pytest
import torch

from bitmind_lite.detectors import create_detector
from bitmind_lite.detectors.runtimes import RUNTIMES
from base_miner.toydata import toy_checkpoint

SIZE = 64


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    return toy_checkpoint(d / "a.pth", 0), toy_checkpoint(d / "b.pth", 1)


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.randn(4, 3, SIZE, SIZE)


@pytest.mark.parametrize("runtime, tol", [("channels_last", 1e-4), ("onnx", 1e-4), ("bf16", 0.15)])
def test_runtime_agrees_with_eager(runtime, tol, ckpts, batch):
    eager = create_detector("npr", weights=ckpts[0], device="cpu", input_size=SIZE)
    fast = create_detector("npr", weights=ckpts[0], device="cpu", input_size=SIZE, runtime=runtime)
    ref, got = eager.logits(batch), fast.logits(batch)
    assert got.shape == ref.shape == (4,) and got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=tol * max(1.0, ref.abs().max().item()), rtol=0), (ref, got)
    p = fast.predict(batch[:1])  # batch size differs from the one used before (dynamic batch)
    assert p.shape == (1,) and 0 <= p.item() <= 1


def test_onnx_is_exported_from_the_loaded_weights_and_follows_reload(ckpts, batch):
    det = create_detector("npr", weights=ckpts[0], device="cpu", input_size=SIZE, runtime="onnx")
    before = det.logits(batch)
    det.reload(ckpts[1])
    after = det.logits(batch)
    expected = create_detector("npr", weights=ckpts[1], device="cpu", input_size=SIZE).logits(batch)
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, expected, atol=1e-4 * max(1.0, expected.abs().max().item()))


def test_onnx_rejects_a_size_it_was_not_built_for(ckpts):
    det = create_detector("npr", weights=ckpts[0], device="cpu", input_size=SIZE, runtime="onnx")
    with pytest.raises(ValueError, match=f"Bx3x{SIZE}x{SIZE}"):
        det.predict(torch.zeros(1, 3, SIZE + 2, SIZE + 2))


def test_int8_runs_from_its_cached_model_checked_against_the_weights(ckpts, tmp_path):
    from base_miner.quantize import main as quantize
    from base_miner.toydata import make_toy_dataset

    a = tmp_path / "a.pth"
    a.write_bytes(ckpts[0].read_bytes())
    with pytest.raises(ValueError, match="a.int8.onnx not found.*quantize.py"):
        create_detector("npr", weights=a, device="cpu", input_size=SIZE, runtime="onnx_int8")
    data = make_toy_dataset(tmp_path / "toy", n_per_class=4, size=SIZE, splits=("train",))
    assert quantize(["--model_path", str(a), "--dataroot", str(data / "train"), "--n", "8",
                     "--input_size", str(SIZE)]) == 0
    fast = create_detector("npr", weights=a, device="cpu", input_size=SIZE, runtime="onnx_int8")
    # images like the calibration ones (int8 ranges are only meaningful on the distribution they were measured on)
    from base_miner.toydata import toy_image
    rng = np.random.default_rng(7)
    images = torch.stack([fast.preprocess(toy_image(rng, SIZE, fake=bool(i % 2))) for i in range(6)])
    ref = create_detector("npr", weights=a, device="cpu", input_size=SIZE).logits(images)
    got = fast.logits(images)
    assert torch.allclose(got, ref, atol=0.05 * max(1.0, ref.abs().max().item()), rtol=0), (ref, got)
    # other weights under the same name make the cached model stale: refused, never run against the wrong network
    a.write_bytes(ckpts[1].read_bytes())
    with pytest.raises(ValueError, match="was made for"):
        create_detector("npr", weights=a, device="cpu", input_size=SIZE, runtime="onnx_int8")


def test_auto_picks_the_measured_fastest_accurate_runtime(ckpts):
    det = create_detector("npr", weights=ckpts[0], device="cpu", input_size=SIZE, runtime="auto")
    assert det.runtime == "onnx" and det.requested_runtime == "auto"  # see AUTO in runtimes.py and weights/npr.md
    eager = create_detector("npr", weights=ckpts[0], device="cpu", input_size=SIZE)
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.allclose(det.logits(x), eager.logits(x), atol=1e-4 * max(1.0, eager.logits(x).abs().max().item()))


def test_unknown_runtime_lists_the_choices():
    with pytest.raises(ValueError, match="unknown runtime 'turbo'.*onnx"):
        create_detector("npr", device="cpu", runtime="turbo")
    assert {"eager", "channels_last", "compile", "bf16", "onnx"} <= set(RUNTIMES)


def test_random_detector_accepts_a_runtime_setting():
    assert create_detector("random", runtime="onnx").predict(torch.zeros(2, 3, 8, 8)).shape == (2,)
