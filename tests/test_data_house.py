"""House generators: the training script runs end to end and resumes exactly; every family's bundled weights make a
box-sized twin of the real window (same content, different pixels) with a complete, replayable record; a missing
weights file is reported with the command that trains it."""
import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from base_miner import train_generators
from bitmind_lite.data import house, open_real_source
from bitmind_lite.data.families import get_family
from bitmind_lite.data.photo import SourceError, pil_to_tensor, random_box

HAVE_DIFFUSERS = importlib.util.find_spec("diffusers") is not None
FAMILIES = [pytest.param(f, marks=pytest.mark.skipif(f in house.DIFFUSERS_FAMILIES and not HAVE_DIFFUSERS,
                                                     reason="needs diffusers ([online] extra)"))
            for f in house.FAMILIES]


def tiny_run(out, family, *extra):
    train_generators.main(["--family", family, "--out", str(out), "--steps", "2", "--crop", "16", "--batch", "2",
                           "--photos", "2", "--threads", "1", "--log-every", "1000", *extra])


def load_ckpt(out, family):
    return torch.load(out / "checkpoints" / f"{family}.ckpt", weights_only=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_script_writes_loadable_weights_and_resumes(tmp_path, family, capsys):
    tiny_run(tmp_path, family)
    model, record = house.load_weights(family, tmp_path / f"{family}.pt")
    assert record["train"]["steps"] == 2 and load_ckpt(tmp_path, family)["step"] == 2
    assert record["train"]["params"] == sum(p.numel() for p in model.parameters())
    assert (tmp_path / f"{family}.png").stat().st_size > 0
    tiny_run(tmp_path, family, "--steps", "3", "--resume")
    assert f"resumed from {tmp_path / 'checkpoints' / f'{family}.ckpt'} at step 2" in capsys.readouterr().out
    _, record = house.load_weights(family, tmp_path / f"{family}.pt")
    assert record["train"]["steps"] == 3 and load_ckpt(tmp_path, family)["step"] == 3


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    """Per-step data/noise seeds + saved optimiser and discriminator state: 2 steps + 1 resumed == 3 steps."""
    tiny_run(tmp_path / "a", "house_gan_deconv", "--steps", "3")
    tiny_run(tmp_path / "b", "house_gan_deconv")
    tiny_run(tmp_path / "b", "house_gan_deconv", "--steps", "3", "--resume")
    a, b = load_ckpt(tmp_path / "a", "house_gan_deconv"), load_ckpt(tmp_path / "b", "house_gan_deconv")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    fresh = load_ckpt(tmp_path / "b", "house_gan_deconv")["model"]
    tiny_run(tmp_path / "b", "house_gan_deconv", "--steps", "3")  # without --resume: starts again from step 0
    assert load_ckpt(tmp_path / "b", "house_gan_deconv")["step"] == 3
    assert all(torch.equal(fresh[k], v) for k, v in load_ckpt(tmp_path / "b", "house_gan_deconv")["model"].items())


@pytest.fixture(scope="module")
def photo():
    src = open_real_source("bundled")
    return src.photo("skimage/coffee" if "skimage/coffee" in src.ids() else src.ids()[0])


@pytest.fixture(scope="module")
def source():
    torch.set_num_threads(1)
    available = [f for f in house.FAMILIES if house.family_status(f) is None]
    src = house.open_source(available)
    yield src
    src.close()


def psnr(a, b) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)))


@pytest.mark.parametrize("family", FAMILIES)
def test_bundled_weights_make_a_twin_with_a_complete_record(source, photo, family):
    assert house.family_status(family) is None and get_family(family).status() is None
    rng = np.random.default_rng(3)
    for box in (random_box(rng, photo.image.size, 256), (0, 0, 96, 96)):  # inside, and at the photo's corner
        fake, params = source.make(photo, box, np.random.default_rng(7), family=family)
        real = photo.image.crop(box)
        assert fake.size == real.size and fake.mode == "RGB"
        assert 0.5 < np.mean(np.abs(np.asarray(fake, float) - np.asarray(real, float))), "the twin is a copy"
        assert psnr(fake, real) > 18.0, "the twin lost the window's content"
        json.dumps(params)
        assert params["family"] == family and params["kind"] == "house"
        assert params["weights"] == f"{family}.pt"
        assert params["weights_sha256"] == house.file_fingerprint(house.weights_path(family))
        assert params["train_steps"] > 0 and isinstance(params["seed"], int)
        assert all(o in range(house.MULTIPLE) for o in params["grid_offset"])
        if family == "house_ddpm":
            assert house.STRENGTH_RANGE[0] <= params["strength"] <= house.STRENGTH_RANGE[1]
            assert params["ddim_steps"] == len(params["timesteps"]) >= 1
        again, same = source.make(photo, box, np.random.default_rng(7), family=family)
        assert same == params and np.array_equal(np.asarray(again), np.asarray(fake)), "not replayable"


def upsampling_peaks(img) -> float:
    """Spectrum of the high-pass grey image at the 2x/4x up-sampling frequencies (1/2, 1/4 cycles per pixel),
    relative to its mean: trained up-sampling decoders leave periodic peaks there, camera photos do not."""
    g = torch.from_numpy(np.asarray(img, np.float32).mean(2))
    g = g - F.avg_pool2d(g[None, None], 3, 1, 1, count_include_pad=False)[0, 0]
    spec, n = torch.fft.fft2(g).abs(), g.shape[0]
    return float(torch.stack([spec[n // 2, 0], spec[0, n // 2], spec[n // 2, n // 2], spec[n // 4, 0],
                              spec[0, n // 4]]).mean() / spec.mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_twins_carry_the_decoder_fingerprint(source, photo, family):
    rng = np.random.default_rng(11)
    ratios = []
    for _ in range(3):
        box = random_box(rng, photo.image.size, 256)
        fake, _ = source.make(photo, box, rng, family=family)
        ratios.append(upsampling_peaks(fake) / upsampling_peaks(photo.image.crop(box)))
    assert np.median(ratios) > 1.3, ratios


@pytest.mark.parametrize("family", FAMILIES)
def test_render_is_exactly_sized_and_follows_the_grid_offset(source, photo, family):
    """Any size in, the same size out; the offset moves the generator's grid, so the pixels change."""
    x = pil_to_tensor(photo.image.crop((0, 0, 37, 50)))
    p = house.sample_params(np.random.default_rng(0), family)
    y0, _ = house.render(family, source.models[family], x, {**p, "grid_offset": [0, 0]})
    y1, _ = house.render(family, source.models[family], x, {**p, "grid_offset": [1, 3]})
    assert y0.shape == y1.shape == x.shape
    assert (y0 - y1).abs().mean() > 1e-3


def test_ddim_uses_the_training_noise_schedule():
    diffusers = pytest.importorskip("diffusers")
    assert torch.equal(house.alphas_cumprod(), diffusers.DDPMScheduler(**house.NOISE_SCHEDULE).alphas_cumprod)


def test_missing_weights_name_the_file_and_the_command(tmp_path):
    for family in house.FAMILIES:
        why = house.family_status(family, weights_dir=tmp_path)
        assert str(tmp_path / f"{family}.pt") in why
        assert f"python -m base_miner.train_generators --family {family}" in why
    with pytest.raises(SourceError, match="house_vae"):
        house.open_source(["house_vae"], weights_dir=tmp_path)
    assert "not a house family" in house.family_status("nearest")


def test_bad_weights_and_options_are_clear_errors(tmp_path):
    (tmp_path / "house_gan_deconv.pt").write_bytes(b"not a torch file")
    with pytest.raises(SourceError, match="cannot read weights"):
        house.open_source(["house_gan_deconv"], weights_dir=tmp_path)
    with pytest.raises(SourceError, match="not a house_gan_pixelshuffle weights file"):
        (tmp_path / "house_gan_pixelshuffle.pt").write_bytes((house.WEIGHTS_DIR / "house_gan_deconv.pt").read_bytes())
        house.open_source(["house_gan_pixelshuffle"], weights_dir=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(SourceError, match="CUDA is not available"):
            house.open_source(["house_gan_deconv"], device="cuda")
    with pytest.raises(SourceError, match="house_nope.*not a house family"):
        house.open_source(["house_nope"])
