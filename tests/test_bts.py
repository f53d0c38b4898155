"""Beyond the Spectrum (bitmind_lite/detectors/bts.py), its trainer and the ensemble: tiny sizes, CPU, seconds.

The premise (fakes re-synthesize worse than reals) is measured on the real data set in docs/bts.md, not here.
"""
import json
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from base_miner import test as test_py
from base_miner import train_bts
from bitmind_lite.config import MinerConfig
from bitmind_lite.detectors import create_detector, list_detectors
from bitmind_lite.detectors.bts import (BTSConfig, BTSNet, box_downscale, checkpoint_config, corrupt_lr,
                                        crop_to_multiple)
from bitmind_lite.detectors.checkpoint import CheckpointError, default_weights, weights_fingerprint
from bitmind_lite.miner.run import build_detector
from bitmind_lite.protocol import decode_image
from miner_support import SIZE, body_of, in_process_miner, keypair, post, sample_image, subnet  # noqa: F401

TINY = BTSConfig(g0=8, g=8, d=2, c=2, scale=2, width=8, blocks=1)


def tiny_checkpoint(path: Path, cfg: BTSConfig = TINY, seed: int = 0) -> Path:
    """A BTSNet whose classifier BatchNorm statistics come from random inputs (well-scaled logits), saved."""
    torch.manual_seed(seed)
    net = BTSNet(cfg)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        net.train()(torch.rand(4, 3, 48, 48))
        net.cls.fc.weight.mul_(3)  # steeper head: different images get tellably different answers
    torch.save(net.state_dict(), path)
    return path


def photo_folder(root: Path, photo: Image.Image, split: str, n: int, size: int, seed: int) -> None:
    """n random native-pixel crops of a real photo as root/split/photo/0_real/*.png."""
    arr, rng = np.asarray(photo), np.random.default_rng(seed)
    out = root / split / "photo" / "0_real"
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        top, left = rng.integers(0, arr.shape[0] - size), rng.integers(0, arr.shape[1] - size)
        Image.fromarray(arr[top:top + size, left:left + size]).save(out / f"{i:03d}.png")


# ------------------------------------------------------------------ the re-synthesis input
@pytest.mark.parametrize("s", [2, 3, 4])
def test_box_downscale_is_avg_pool(s):
    x = torch.rand(2, 3, 4 * 6 + 1, 4 * 5 + 3)  # sides not divisible by s: cropped first
    cropped = crop_to_multiple(x, s)
    assert torch.allclose(box_downscale(x, s), F.avg_pool2d(cropped, s), atol=1e-6)


@pytest.mark.parametrize("s,h,w", [(2, 35, 50), (3, 35, 50), (4, 37, 42)])
def test_sides_not_divisible_by_the_scale_are_cropped(s, h, w):
    net = BTSNet(BTSConfig(**{**TINY.__dict__, "scale": s})).eval()
    x = torch.rand(2, 3, h, w)
    xc, sr = net.resynthesize(x)
    assert xc.shape == sr.shape == (2, 3, h - h % s, w - w % s)
    assert torch.equal(xc, x[..., : h - h % s, : w - w % s])  # cropped, not resized
    with torch.no_grad():
        assert net(x).shape == (2,)
    with pytest.raises(ValueError, match="smaller than the BTS scale"):
        crop_to_multiple(torch.rand(1, 3, 1, 8), 2)


def test_fresh_sr_is_bilinear_and_corruptions_stay_in_range():
    net = BTSNet(TINY)
    lr = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net.sr(lr), F.interpolate(lr, scale_factor=2, mode="bilinear", align_corners=False))
    out = corrupt_lr(lr, torch.Generator().manual_seed(0), p=1.0)
    changed = (out != lr).flatten(1).any(1)
    assert out.shape == lr.shape and changed.all() and out.min() >= 0 and out.max() <= 1


def test_stage5_feature_with_random_vgg_on_tiny_input():
    net = BTSNet(BTSConfig(**{**TINY.__dict__, "feature": "stage5"})).eval()  # random VGG19 (no weights offline)
    x = torch.rand(2, 3, 32, 32)
    xc, sr = net.resynthesize(x)
    assert net.error(xc, sr).shape == (2, 512, 2, 2)  # relu5_1: 512 channels at H/16
    with torch.no_grad():
        assert net(x).shape == (2,)
    assert not any(p.requires_grad for p in net.vgg.parameters())
    with pytest.raises(ValueError, match="vgg_weights"):
        create_detector("bts", device="cpu", pretrained=False, feature="stage5")


# ------------------------------------------------------------------ checkpoints and the registry
def test_checkpoint_carries_its_config(tmp_path):
    cfg = BTSConfig(g0=4, g=6, d=1, c=2, scale=4, skip=0, width=4, blocks=2)
    path = tiny_checkpoint(tmp_path / "b.pth", cfg)
    assert checkpoint_config(path) == cfg
    det = create_detector("bts", weights=path, device="cpu", input_size=SIZE)
    assert det.model.cfg == cfg and det.name == "bts"
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        create_detector("bts", weights=path, device="cpu", g0=8)
    torch.save(torch.nn.Linear(2, 1).state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a BTS checkpoint"):
        create_detector("bts", weights=tmp_path / "other.pth", device="cpu")
    # hot-swap to a checkpoint of another size rebuilds the network
    det.reload(tiny_checkpoint(tmp_path / "c.pth", TINY))
    assert det.model.cfg == TINY


def test_preprocess_is_unnormalised_native_pixels(real_photo):
    det = create_detector("bts", device="cpu", pretrained=False, input_size=SIZE, **asdict(TINY))
    t = det.preprocess(real_photo)
    assert t.shape == (3, SIZE, SIZE) and 0 <= t.min() and t.max() <= 1
    left, top = ((real_photo.width - SIZE) // 2) & ~1, ((real_photo.height - SIZE) // 2) & ~1
    crop = np.asarray(real_photo)[top:top + SIZE, left:left + SIZE].transpose(2, 0, 1) / 255
    assert np.allclose(t.numpy(), crop, atol=1e-6)


# ------------------------------------------------------------------ training
def test_sr_stage_lowers_reconstruction_error_on_real_photos(tmp_path, real_photo):
    from skimage import data

    root = tmp_path / "data"
    photo_folder(root, real_photo, "train", 12, 48, seed=0)
    photo_folder(root, Image.fromarray(data.chelsea()), "val", 6, 48, seed=1)  # another photo: held out
    args = ["--stage", "sr", "--dataroot", str(root), "--checkpoints_dir", str(tmp_path / "ck"), "--name", "t",
            "--patch", "32", "--batch_size", "6", "--eval_size", "48", "--val_every", "20", "--lr", "2e-3",
            *[f"--{k}={v}" for k, v in TINY.__dict__.items()]]
    assert train_bts.main([*args, "--max_steps", "20"]) == 0
    assert train_bts.main([*args, "--max_steps", "40", "--resume"]) == 0  # continues at step 20
    history = json.loads((tmp_path / "ck" / "t" / "sr_history.json").read_text())["history"]
    assert [h["step"] for h in history] == [20, 40]
    val = history[-1]["val"]
    # the fresh network is exactly bilinear up-sampling: training on reals must beat it on an unseen photo
    assert val["l1"] < val["bilinear_l1"] and history[-1]["val"]["l1"] <= history[0]["val"]["l1"]
    det = create_detector("bts", weights=tmp_path / "ck" / "t" / "sr_best.pth", device="cpu", input_size=48)
    assert det.model.cfg == TINY


def test_cls_stage_then_test_py_on_toy_data(tmp_path, capsys):
    from base_miner.toydata import make_toy_dataset

    root = make_toy_dataset(tmp_path / "toy", n_per_class=4, size=48, classes=("a", "b"),
                            splits=("train", "val", "test"))
    ck = tmp_path / "ck"
    common = ["--dataroot", str(root), "--checkpoints_dir", str(ck), "--name", "t", "--batch_size", "4",
              "--eval_size", "48", "--val_every", "3"]
    assert train_bts.main(["--stage", "cls", *common]) == 2  # no SR stage yet: a clear error, exit 2
    assert "run the previous stage" in capsys.readouterr().err
    (ck / "t").mkdir(parents=True, exist_ok=True)
    tiny_checkpoint(ck / "t" / "sr_best.pth")
    sr_before = {k: v for k, v in torch.load(ck / "t" / "sr_best.pth").items() if k.startswith("sr.")}
    assert train_bts.main(["--stage", "cls", *common, "--crop_size", "32", "--max_steps", "3"]) == 0
    after = torch.load(ck / "t" / "cls_best.pth")
    assert all(torch.equal(after[k], v) for k, v in sr_before.items())  # the SR model stayed frozen
    assert train_bts.main(["--stage", "aux", *common, "--crop_size", "32", "--max_steps", "2"]) == 0
    out = tmp_path / "r.json"
    assert test_py.main(["--arch", "bts", "--model_path", str(ck / "t" / "aux_best.pth"), "--dataroot",
                         str(root / "test"), "--input_size", "48", "--json", str(out), "--quiet"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"a", "b"} and all(r["n_real"] == r["n_fake"] == 4 for r in rows.values())
    assert train_bts.main(["--stage", "premise", *common, "--split", "test"]) == 0  # measures the SR of sr_best
    premise = json.loads((ck / "t" / "premise_test.json").read_text())["rows"]
    assert set(premise) == {"a", "b"} and all(r["real_l1"] > 0 and 0 <= r["auc_error"] <= 1 for r in premise.values())


def test_fresh_cls_keeps_the_resynthesizer_and_restarts_the_classifier(tmp_path, capsys):
    """--fresh_cls (leave-one-family-out from a trained detector): SR from --init, the classifier a fresh sr stage
    would have handed on; --epochs sets the stage's length in passes over the training set."""
    from base_miner.toydata import make_toy_dataset

    root = make_toy_dataset(tmp_path / "toy", n_per_class=4, size=48, classes=("a", "b"), splits=("train", "val"))
    trained = tiny_checkpoint(tmp_path / "trained.pth", seed=3)
    args = train_bts.build_parser().parse_args(["--stage", "cls", "--dataroot", str(root), "--init", str(trained),
                                                "--fresh_cls", "--eval_size", "48", "--seed", "5"])
    train_bts.check_args(train_bts.build_parser(), args)
    detector, _ = train_bts.build_net(args, tmp_path, "cpu")
    before = torch.load(trained)
    torch.manual_seed(5)  # what the sr stage does before it builds its fresh network
    fresh = create_detector("bts", device="cpu", pretrained=False, input_size=48, **asdict(TINY)).model
    for k, v in detector.model.state_dict().items():
        want = before[k] if not k.startswith("cls.") else fresh.state_dict()[k]
        assert torch.equal(v, want), k
    assert not all(torch.equal(before[k], fresh.state_dict()[k]) for k in before if k.startswith("cls."))
    ck = tmp_path / "ck"
    assert train_bts.main(["--stage", "cls", "--dataroot", str(root), "--init", str(trained), "--fresh_cls",
                           "--checkpoints_dir", str(ck), "--name", "f", "--batch_size", "4", "--crop_size", "32",
                           "--eval_size", "48", "--epochs", "1", "--val_every", "100"]) == 0
    history = json.loads((ck / "f" / "cls_history.json").read_text())["history"]
    assert history[-1]["epoch"] == 1.0 and history[-1]["step"] >= 2
    with pytest.raises(SystemExit) as e:
        train_bts.main(["--stage", "aux", "--dataroot", str(root), "--fresh_cls"])
    assert e.value.code == 2 and "--fresh_cls is for --stage cls" in capsys.readouterr().err


# ------------------------------------------------------------------ serving
def test_bts_serves_through_the_miner(subnet, tmp_path):  # noqa: F811
    weights = tiny_checkpoint(tmp_path / "bts.pth")
    cfg = MinerConfig.model_validate({"netuid": 1, "neuron": {"detector": "bts", "weights": str(weights),
                                                              "device": "cpu", "input_size": SIZE}})
    detector, _ = build_detector(cfg)
    images = [sample_image(i) for i in range(3)]
    expected = [detector.predict_images([decode_image(b)])[0] for b in images]
    assert len({round(p, 4) for p in expected}) > 1  # the images are told apart
    with in_process_miner(subnet, detector) as node:
        for image, p in zip(images, expected):
            r = post(node, keypair("Alice"), body_of(image))
            assert r.status_code == 200, r.text
            assert r.json()["prediction"] == pytest.approx(p, abs=1e-5)
        health = httpx.get(node.url + "/health", timeout=10).json()
        assert health["detector"] == "bts" and health["version"] == detector.version != "untrained"


def test_ensemble_from_the_registry(tmp_path, real_photo):
    from base_miner.toydata import toy_checkpoint

    assert {"bts", "ensemble"} <= set(list_detectors())
    npr, bts = toy_checkpoint(tmp_path / "npr.pth"), tiny_checkpoint(tmp_path / "bts.pth")
    members = f"npr={npr},bts={bts}"
    ens = create_detector("ensemble", members=members, device="cpu", input_size=SIZE)
    images = [real_photo, real_photo.transpose(Image.FLIP_LEFT_RIGHT).resize((70, 90)), Image.new("RGB", (40, 40))]
    batch = torch.stack([ens.preprocess(im) for im in images])
    p = ens.predict(batch)
    assert p.shape == (3,) and ((p >= 0) & (p <= 1)).all()
    singles = [create_detector(n, weights=w, device="cpu", input_size=SIZE) for n, w in (("npr", npr), ("bts", bts))]
    per_member = torch.tensor([d.predict_images(images) for d in singles])  # members x B
    assert torch.allclose(p, per_member.mean(0), atol=1e-5)  # each member saw its own preprocess
    logit = create_detector("ensemble", members=members, combine="logit", device="cpu", input_size=SIZE)
    assert torch.allclose(logit.predict(batch), torch.sigmoid(torch.logit(per_member).mean(0)), atol=1e-5)
    assert ens.version == f"npr:{singles[0].version}+bts:{singles[1].version}"
    with pytest.raises(ValueError, match="at least two"):
        create_detector("ensemble", members="npr", device="cpu")
    with pytest.raises(ValueError, match="takes no weights"):
        create_detector("ensemble", weights=npr, device="cpu")
    with pytest.raises(ValueError, match="ensemble batch must be"):
        ens.predict(torch.rand(2, 3, SIZE, SIZE))


@pytest.mark.skipif(default_weights("bts") is None, reason="no bundled weights/bts.pth")
def test_bundled_bts_and_default_ensemble(real_photo):
    bts = create_detector("bts", device="cpu")
    assert bts.weights_path == default_weights("bts") and bts.version == weights_fingerprint(bts.weights_path)
    ens = create_detector("ensemble", device="cpu")  # members npr,bts with their bundled weights
    assert [m.name for m in ens.members] == ["npr", "bts"]
    p = ens.predict_images([real_photo, real_photo.rotate(90, expand=True)])
    assert len(p) == 2 and all(0 <= v <= 1 for v in p)
