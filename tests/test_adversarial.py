"""base_miner/adversarial.py: the per-pixel blur is a convex Gaussian kernel that becomes the identity at its limit,
the adversary raises the detector's loss and the detector's step lowers it, and train.py's mode runs and resumes."""
import json
import math
import subprocess

import pytest
import torch

from base_miner import train
from base_miner.adversarial import SHARPNESS_MAX, BlurAdversary, pixel_gaussian_blur
from base_miner.toydata import make_toy_dataset
from bitmind_lite.detectors import create_detector


def test_the_blur_is_exactly_the_identity_at_its_limit():
    x = torch.randn(2, 3, 16, 12)
    s = torch.full((2, 1, 16, 12), SHARPNESS_MAX)
    assert torch.equal(pixel_gaussian_blur(x, s, 3), x)
    assert torch.equal(pixel_gaussian_blur(x, s, 5), x)


def test_the_blur_is_a_normalised_gaussian_kernel_at_every_pixel():
    torch.manual_seed(0)
    s = 1 + 50 * torch.rand(1, 1, 9, 9)
    # a convex combination: a constant image stays constant, a positive one stays inside its window's range
    ones = torch.ones(1, 3, 9, 9)
    assert torch.allclose(pixel_gaussian_blur(ones, s), ones, atol=1e-6)
    x = torch.rand(1, 3, 9, 9)
    out = pixel_gaussian_blur(x, s)
    local_max = torch.nn.functional.max_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1)
    local_min = -torch.nn.functional.max_pool2d(torch.nn.functional.pad(-x, (1, 1, 1, 1), mode="reflect"), 3, 1)
    assert (out <= local_max + 1e-6).all() and (out >= local_min - 1e-6).all()
    # the weights themselves: blurring a delta at an interior pixel with s = 1 gives exp(-|d|^2/2) / Z around it
    delta = torch.zeros(1, 1, 7, 7)
    delta[0, 0, 3, 3] = 1
    out = pixel_gaussian_blur(delta, torch.ones(1, 1, 7, 7))[0, 0]
    z = 1 + 4 * math.exp(-0.5) + 4 * math.exp(-1)
    assert out[3, 3].item() == pytest.approx(1 / z, rel=1e-5)
    assert out[3, 4].item() == pytest.approx(math.exp(-0.5) / z, rel=1e-5)
    assert out[4, 4].item() == pytest.approx(math.exp(-1) / z, rel=1e-5)
    assert out[3, 5].item() == 0  # outside the 3x3 window


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="odd"):
        pixel_gaussian_blur(torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 8, 8), radius=4)
    with pytest.raises(ValueError, match="sharpness must be"):
        pixel_gaussian_blur(torch.zeros(1, 3, 8, 8), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="multiples of 4"):
        BlurAdversary().sharpness(torch.zeros(1, 3, 30, 30))


def test_one_adversary_step_raises_the_detectors_loss_and_one_detector_step_lowers_it():
    torch.manual_seed(1)
    detector = create_detector("npr", device="cpu", pretrained=False, input_size=32).model.train()
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0.0, 1.0] * 4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    adversary = BlurAdversary(ngf=4, blocks=1)
    opt = torch.optim.RAdam(adversary.parameters(), lr=0.05)

    def detector_loss_on_blurred():
        detector.eval()
        with torch.no_grad():
            return loss_fn(detector(adversary(x)), y).item()

    before = detector_loss_on_blurred()
    for p in detector.parameters():
        p.requires_grad_(False)
    (-loss_fn(detector(adversary(x)), y)).backward()
    opt.step()
    for p in detector.parameters():
        p.requires_grad_(True)
    assert detector_loss_on_blurred() > before

    with torch.no_grad():
        blurred = adversary(x)
    inputs, labels = torch.cat([x, blurred]), torch.cat([y, y])
    detector.train()
    d_opt = torch.optim.Adam(detector.parameters(), lr=1e-3)
    loss = loss_fn(detector(inputs), labels)
    loss.backward()
    d_opt.step()
    with torch.no_grad():
        assert loss_fn(detector(inputs), labels).item() < loss.item()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_per_class=4, size=48, seed=1, classes=("a",))


# 8 images, batch 4: 2 steps per epoch
TINY = ["--batch_size", "4", "--lr", "2e-3", "--crop_size", "32", "--eval_size", "48", "--seed", "3", "--g_per_d", "1",
        "--gen_ngf", "4", "--val_every", "0"]


def test_the_adversarial_mode_runs_end_to_end_and_resumes_to_the_same_weights(toy, tmp_path):
    base = ["--dataroot", str(toy), "--checkpoints_dir", str(tmp_path), "--niter", "2", "--adversarial"] + TINY
    assert train.main(base + ["--name", "straight"]) == 0
    assert train.main(base + ["--name", "split", "--max_steps", "3"]) == 0  # stops mid-epoch 2
    assert train.main(base + ["--name", "split", "--resume"]) == 0
    a = torch.load(tmp_path / "straight" / "model_epoch_last.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "model_epoch_last.pth", weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)  # the adversaries came back too
    meta = json.loads((tmp_path / "split" / "model_epoch_last.meta.json").read_text())
    assert meta["mode"] == "adversarial-blur" and not meta["partial"]
    create_detector("npr", weights=tmp_path / "split" / "model_epoch_last.pth", device="cpu")  # a plain checkpoint


def test_resuming_in_another_mode_is_a_clear_error(toy, tmp_path, capsys):
    base = ["--dataroot", str(toy), "--checkpoints_dir", str(tmp_path), "--name", "r", "--niter", "1"] + TINY
    assert train.main(base + ["--aug_blur", "--max_steps", "1"]) == 0
    assert train.main(base + ["--resume"]) == 2
    assert "mode aug_blur, not plain" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--adversarial", "--aug_blur"], "alternatives"),
    (["--adversarial", "--radius", "4"], "odd"),
    (["--adversarial", "--crop_size", "30"], "multiple of 4"),
])
def test_bad_options_are_cli_errors(toy, args, message):
    proc = subprocess.run([".venv/bin/python", "base_miner/train.py", "--dataroot", str(toy)] + args,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr
