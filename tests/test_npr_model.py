"""The NPR model must be the reference's: residual properties, exact size, reference-keyed strict load."""
import pytest
import torch
import torch.nn.functional as F

from bitmind_lite.detectors import NPRNet, npr_residual


def test_npr_residual_is_zero_at_top_left_of_every_2x2_block():
    x = torch.randn(2, 3, 8, 10)
    r = npr_residual(x)
    assert torch.all(r[:, :, 0::2, 0::2] == 0)
    # and the other three pixels carry w_i - w_1
    assert torch.allclose(r[:, :, 0::2, 1::2], x[:, :, 0::2, 1::2] - x[:, :, 0::2, 0::2])
    assert torch.allclose(r[:, :, 1::2, 1::2], x[:, :, 1::2, 1::2] - x[:, :, 0::2, 0::2])


def test_npr_residual_vanishes_on_nearest_upsampled_images():
    low = torch.rand(1, 3, 16, 16)
    up = F.interpolate(low, scale_factor=2, mode="nearest")
    assert npr_residual(up).abs().max() == 0
    # bilinear up-sampling is not invisible: that is the signal NPR reads
    assert npr_residual(F.interpolate(low, scale_factor=2, mode="bilinear")).abs().max() > 0


def test_npr_residual_ignores_a_per_channel_constant():
    x = torch.rand(1, 3, 12, 12)
    shift = torch.tensor([0.3, -1.2, 5.0]).view(1, 3, 1, 1)
    assert torch.allclose(npr_residual(x + shift), npr_residual(x), atol=1e-5)


def test_odd_sizes_are_cropped_to_even():
    x = torch.rand(1, 3, 15, 13)
    r = npr_residual(x)
    assert r.shape[-2:] == (14, 12)
    assert torch.allclose(r, npr_residual(x[..., :14, :12]))
    assert NPRNet()(torch.rand(2, 3, 65, 67)).shape == (2,)


def test_exact_parameter_count():
    assert sum(p.numel() for p in NPRNet().parameters()) == 1_437_761


def _reference_state_dict() -> dict:
    """A checkpoint as the reference code writes it: torchvision ResNet-50 names, fc1 (B,1) head, DDP-free."""
    torch.manual_seed(1)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in NPRNet().state_dict().items()}


def test_reference_keys_load_strictly(tmp_path):
    from bitmind_lite.detectors import create_detector

    sd = _reference_state_dict()
    keys = set(sd)
    assert {"conv1.weight", "bn1.running_mean", "fc1.weight", "fc1.bias"} <= keys
    assert {k.split(".")[0] for k in keys} == {"conv1", "bn1", "layer1", "layer2", "fc1"}
    assert sd["conv1.weight"].shape == (64, 3, 3, 3) and sd["fc1.weight"].shape == (1, 512)
    # the reference trainer wraps the weights as {'model': sd}; DDP adds 'module.'
    path = tmp_path / "NPR.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    det = create_detector("npr", weights=path, device="cpu")
    for k, v in det.model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_strict_load_rejects_a_foreign_checkpoint(tmp_path):
    from bitmind_lite.detectors import create_detector
    from bitmind_lite.detectors.checkpoint import CheckpointError

    sd = NPRNet().state_dict()
    sd["layer3.0.conv1.weight"] = torch.zeros(1)  # a full ResNet-50 checkpoint would carry layer3
    path = tmp_path / "resnet50.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of NPRNet.*layer3"):  # a clear error, not torch's
        create_detector("npr", weights=path, device="cpu")
