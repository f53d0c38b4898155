"""base_miner/train.py: learning, checkpoints, resume, DDP equivalence and the CLI, on a tiny generated dataset."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pytest
import torch

from base_miner import train
from base_miner.data import EvalDataset, loader, split_samples
from base_miner.toydata import make_toy_dataset
from bitmind_lite.detectors import create_detector

ROOT = Path(__file__).resolve().parents[1]
# 32 images of 48 px, 32 px crops, batch 4: 8 optimizer steps per epoch, about a second of compute
FAST = ["--batch_size", "4", "--lr", "2e-3", "--crop_size", "32", "--eval_size", "48", "--seed", "3"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), n_per_class=8, size=48, seed=1, classes=("a", "b"))


@pytest.fixture(scope="module")
def one_epoch(toy, tmp_path_factory) -> Path:
    ck = tmp_path_factory.mktemp("ck")
    assert train.main(["--dataroot", str(toy), "--checkpoints_dir", str(ck), "--name", "run", "--niter", "1"] + FAST) == 0
    return ck / "run"


def batch_loss(det, toy) -> float:
    """BCE over all training images in one batch, train-mode BatchNorm (batch statistics, as in training)."""
    x, y = next(iter(loader(EvalDataset(split_samples(toy, "train"), det.preprocess), 64)))
    model = det.model.train()
    with torch.no_grad():
        return torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).item()


def tb_scalars(run: Path, tag: str = "train/loss"):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return acc.Scalars(tag)


def tb_losses(run: Path) -> list[float]:
    return [e.value for e in tb_scalars(run)]


def tb_steps(run: Path) -> list[int]:
    return sorted(e.step for e in tb_scalars(run))


def test_one_epoch_lowers_the_loss_and_writes_loadable_checkpoints(one_epoch, toy):
    for name in ("model_epoch_best.pth", "model_epoch_last.pth"):
        sd = torch.load(one_epoch / name, weights_only=True)
        assert isinstance(sd, dict) and "conv1.weight" in sd and "fc1.bias" in sd  # reference key names, no prefix
        assert not any(k.startswith("module.") for k in sd)
    trained = create_detector("npr", weights=one_epoch / "model_epoch_last.pth", device="cpu", input_size=48)
    torch.manual_seed(3)  # the trainer's seed: the same initial network
    fresh = create_detector("npr", device="cpu", pretrained=False, input_size=48)
    before, after = batch_loss(fresh, toy), batch_loss(trained, toy)
    assert after < 0.7 * before, (before, after)
    history = json.loads((one_epoch / "history.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [0]
    val = history["history"][0]["val"]
    assert val["n_real"] == val["n_fake"] == 16 and val["ap"] is not None
    assert len(tb_losses(one_epoch)) == 8  # one TensorBoard point per step
    assert (one_epoch / "curves.png").stat().st_size > 1000


def test_tensorboard_logs_every_scalar_against_the_step_with_val_loss_auc_and_hparams(one_epoch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(one_epoch / "tb"))
    acc.Reload()
    for tag in ("val/loss", "val/auc", "val/ap", "val/acc", "train/epoch_loss", "train/acc", "train/lr"):
        assert [e.step for e in acc.Scalars(tag)] == [8], tag  # the optimizer step the epoch ended at
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(8))
    val = json.loads((one_epoch / "history.json").read_text())["history"][0]["val"]
    assert acc.Scalars("val/loss")[0].value == pytest.approx(val["loss"], rel=1e-5) and val["loss"] > 0
    hparams = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and b"lr" in hparams["_hparams_/session_start_info"]


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(one_epoch, toy, tmp_path):
    resumed = tmp_path / "resumed"
    subprocess.run(["cp", "-r", str(one_epoch), str(resumed)], check=True)
    args = ["--dataroot", str(toy), "--checkpoints_dir", str(tmp_path), "--niter", "2", "--val_every", "0"] + FAST
    assert train.main(args + ["--name", "resumed", "--resume"]) == 0
    history = json.loads((resumed / "history.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[0] == json.loads((one_epoch / "history.json").read_text())["history"][0]  # epoch 0 not redone
    assert train.main(args + ["--name", "straight"]) == 0
    a = torch.load(resumed / "model_epoch_last.pth", weights_only=True)
    b = torch.load(tmp_path / "straight" / "model_epoch_last.pth", weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)  # optimizer state came back too


def test_resume_without_a_previous_run_is_a_clear_error(toy, tmp_path, capsys):
    rc = train.main(["--dataroot", str(toy), "--checkpoints_dir", str(tmp_path), "--resume"] + FAST)
    assert rc == 2 and "--resume: no" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_give_the_single_process_first_step_loss(one_epoch, toy, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "base_miner" / "train.py"),
           "--dataroot", str(toy), "--checkpoints_dir", str(tmp_path), "--name", "ddp", "--niter", "1",
           "--val_every", "0"] + FAST
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    ddp, single = tb_losses(tmp_path / "ddp"), tb_losses(one_epoch)
    assert len(ddp) == len(single) == 8  # each process took half of every global batch of 4
    assert ddp[0] == pytest.approx(single[0], rel=1e-5)
    sd = torch.load(tmp_path / "ddp" / "model_epoch_last.pth", weights_only=True)
    create_detector("npr", weights=tmp_path / "ddp" / "model_epoch_last.pth", device="cpu")  # strict load
    assert not any(k.startswith("module.") for k in sd)


@pytest.mark.parametrize("cwd, args, message", [
    ("base_miner", ["--jpg_qual", "90,10"], "--jpg_qual"),
    ("repo", ["--dataroot", "/nonexistent/data"], "folder not found: /nonexistent/data/train"),
])
def test_cli_runs_from_the_repo_root_and_from_base_miner_with_clear_errors(cwd, args, message, toy):
    """The seed README runs `python train.py ...` inside base_miner/; the docs run it from the repo root."""
    script, workdir = ("train.py", ROOT / "base_miner") if cwd == "base_miner" else ("base_miner/train.py", ROOT)
    proc = subprocess.run([sys.executable, script, "--dataroot", str(toy)] + args, cwd=workdir,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_class_lists_the_available_ones(toy, tmp_path, capsys):
    assert train.main(["--dataroot", str(toy), "--classes", "a,zebra", "--checkpoints_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "zebra" in err and "a, b" in err


# ---------------------------------------------------------------- datasets from `bitmind-lite data build`

MIXED = ["--batch_size", "4", "--lr", "2e-3", "--crop_size", "48", "--eval_size", "64", "--seed", "5"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A tiny builder dataset with three generator families (64 px, 6 pairs per family in train)."""
    from bitmind_lite.data.builder import BuildConfig, build_dataset

    out = tmp_path_factory.mktemp("mixed") / "data"
    torch_threads = torch.get_num_threads()
    build_dataset(BuildConfig(out=str(out), fake=[], families="nearest,bilinear,transposed", train=18, val=6,
                              test_per_family=2, size=64, holdout_real=4, val_photos=4), progress=False)
    torch.set_num_threads(torch_threads)
    return out


def test_training_on_a_mixed_family_build_writes_checkpoints_with_their_meta(mixed, tmp_path, capsys):
    assert train.main(["--dataroot", str(mixed), "--checkpoints_dir", str(tmp_path), "--name", "m", "--niter", "1"]
                      + MIXED) == 0
    run = tmp_path / "m"
    assert "{'bilinear': 12, 'nearest': 12, 'transposed': 12}" in capsys.readouterr().out
    from bitmind_lite.detectors.base import weights_fingerprint

    for name in ("model_epoch_best", "model_epoch_last"):
        meta = json.loads((run / f"{name}.meta.json").read_text())
        assert meta["weights"] == weights_fingerprint(run / f"{name}.pth")  # stamped: a stale sidecar is detectable
        assert meta["train_classes"] == ["bilinear", "nearest", "transposed"] and meta["epoch"] == 0
        create_detector("npr", weights=run / f"{name}.pth", device="cpu", input_size=64)  # strict load
    history = json.loads((run / "history.json").read_text())
    assert history["history"][0]["val"]["n_real"] == 6 and history["steps_per_epoch"] == 9


def test_resume_mid_epoch_continues_at_the_same_step(mixed, tmp_path, capsys):
    args = ["--dataroot", str(mixed), "--checkpoints_dir", str(tmp_path), "--niter", "2", "--val_every", "0"] + MIXED
    assert train.main(args + ["--name", "cut", "--max_steps", "4"]) == 0  # stops inside epoch 1 (9 steps/epoch)
    state = torch.load(tmp_path / "cut" / "train_state.pt", weights_only=False)
    assert (state["epoch"], state["step"]) == (0, 4)
    partial = json.loads((tmp_path / "cut" / "history.json").read_text())["history"]
    assert [(h["epoch"], h["steps"], h.get("partial")) for h in partial] == [(0, 4, True)]
    assert train.main(args + ["--name", "cut", "--resume"]) == 0
    assert "from epoch 1 step 4" in capsys.readouterr().out
    assert train.main(args + ["--name", "straight"]) == 0
    history = json.loads((tmp_path / "cut" / "history.json").read_text())["history"]
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())["history"]
    assert [(h["epoch"], h["steps"]) for h in history] == [(0, 9), (1, 9)]  # the partial record was replaced
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in straight], rel=1e-5)
    steps = tb_steps(tmp_path / "cut")
    assert steps == list(range(18))  # one loss point per step: 0-3 before the stop, 4-17 after, none redone
    a = torch.load(tmp_path / "cut" / "model_epoch_last.pth", weights_only=True)
    b = torch.load(tmp_path / "straight" / "model_epoch_last.pth", weights_only=True)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_cache_decoded_trains_the_same_weights(mixed, tmp_path):
    args = ["--dataroot", str(mixed), "--checkpoints_dir", str(tmp_path), "--niter", "1", "--val_every", "0",
            "--max_steps", "3", "--jpg_prob", "0.5", "--blur_prob", "0.5"] + MIXED
    assert train.main(args + ["--name", "disk"]) == 0
    assert train.main(args + ["--name", "ram", "--cache_decoded"]) == 0
    a = torch.load(tmp_path / "disk" / "model_epoch_last.pth", weights_only=True)
    b = torch.load(tmp_path / "ram" / "model_epoch_last.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- sampler and augmentation units

def test_family_balance_draws_every_family_and_class_equally_per_epoch():
    from base_miner.data import EpochSampler

    # 3 families of very different sizes, one with more fakes than reals
    families = ["big"] * 60 + ["mid"] * 20 + ["small"] * 4
    labels = [0] * 30 + [1] * 30 + [0] * 5 + [1] * 15 + [0] * 2 + [1] * 2
    balanced = EpochSampler(families, labels, "family", seed=1)
    for epoch in (0, 1):
        order = balanced.order(epoch)
        assert len(order) == len(labels)
        counts = {}
        for i in order:
            counts[families[i], labels[i]] = counts.get((families[i], labels[i]), 0) + 1
        assert sorted(counts.values()) == [14] * 6  # 84 draws = 3 families x 2 classes x 14
        assert len(set(order[[f == "big" for f in np.array(families)[order]]])) == 28  # no repeats where enough
    assert not np.array_equal(balanced.order(0), balanced.order(1))
    plain = EpochSampler(families, labels, "none", seed=1).order(0)
    assert sorted(plain.tolist()) == list(range(len(labels)))  # balance none: a permutation, counts as in the data
    equal = EpochSampler(["a"] * 4 + ["b"] * 4, [0, 0, 1, 1] * 2, "family", seed=3).order(0)
    assert sorted(equal.tolist()) == list(range(8))  # equal counts: balancing is a plain permutation


def test_sampler_ranks_split_one_order_and_resume_skips_the_done_part():
    from base_miner.data import EpochSampler

    fams, labels = ["a"] * 7 + ["b"] * 3, [0, 1] * 5
    one = list(EpochSampler(fams, labels, "family", seed=2))
    ranks = [list(EpochSampler(fams, labels, "family", seed=2, world=2, rank=r)) for r in (0, 1)]
    merged = [key for pair in zip(*ranks) for key in pair]
    assert merged[:10] == one and all(draw == pos for pos, (_, draw) in enumerate(one))
    later = EpochSampler(fams, labels, "family", seed=2)
    later.set_epoch(0, start=6)
    assert list(later) == one[6:] and len(later) == 4


def test_augment_treats_both_classes_alike_and_never_resizes():
    from base_miner.data import Augment, TrainDataset

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)  # smaller than the crop on one side: tiled
    aug = Augment(48, blur_prob=1.0, blur_sig=(1.0, 1.0), jpg_prob=1.0, jpg_qual=(60, 60), jpg_method=("cv2", "pil"))
    out = aug(img, np.random.default_rng(7))
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    plain = Augment(48)(img, np.random.default_rng(7))
    tiled = np.tile(img, (2, 1, 1))
    assert any(np.array_equal(plain, win[:, ::-1]) or np.array_equal(plain, win) for win in
               (tiled[t:t + 48, x:x + 48] for t in range(33) for x in range(9)))  # native pixels, no interpolation
    assert np.abs(out.astype(int) - plain.astype(int)).mean() > 1  # blur + JPEG did something
    # the label never enters the augmentation: a "real" and a "fake" file with the same pixels come out the same
    with TemporaryDirectory() as d:
        from PIL import Image

        for name in ("r.png", "f.png"):
            Image.fromarray(img).save(Path(d) / name)
        ds = TrainDataset([(str(Path(d) / "r.png"), 0), (str(Path(d) / "f.png"), 1)], aug, seed=4)
        (xr, yr), (xf, yf) = ds[(0, 5)], ds[(1, 5)]
        assert torch.equal(xr, xf) and (yr.item(), yf.item()) == (0.0, 1.0)
        assert not torch.equal(ds[(0, 5)][0], ds[(0, 6)][0])  # another draw, another crop
    with pytest.raises(ValueError, match="jpg_method"):
        Augment(jpg_method=("opencv",))


def test_validator_levels_at_train_time_and_batch_normalisation_match_the_serving_path():
    from base_miner.data import Augment, normalize_batch
    from bitmind_lite.detectors.base import to_normalized_tensor
    from PIL import Image

    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    levels = Augment(48, level_probs={3: 1.0})(img, np.random.default_rng(2))
    plain = Augment(48)(img, np.random.default_rng(2))
    assert levels.shape == plain.shape == (48, 48, 3) and not np.array_equal(levels, plain)
    batch = torch.from_numpy(np.stack([plain, levels]).copy())
    x = normalize_batch(batch)
    assert x.shape == (2, 3, 48, 48) and x.is_contiguous(memory_format=torch.channels_last)
    ref = torch.stack([to_normalized_tensor(Image.fromarray(a)) for a in (plain, levels)])
    assert torch.allclose(x, ref, atol=1e-6) and torch.allclose(normalize_batch(batch, channels_last=False), ref,
                                                                 atol=1e-6)


def test_train_cli_rejects_bad_new_options(toy, tmp_path, capsys):
    for bad, message in ((["--balance", "classes"], "--balance"), (["--val_levels", "7:1"], "level"),
                         (["--jpg_method", "gif"], "jpg_method"), (["--max_steps", "-1"], "--max_steps")):
        with pytest.raises(SystemExit):
            train.main(["--dataroot", str(toy), "--checkpoints_dir", str(tmp_path)] + bad)
        assert message in capsys.readouterr().err
