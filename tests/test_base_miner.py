"""base_miner/train.py: learning, checkpoints, resume, DDP equivalence and the CLI, on a tiny generated dataset."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

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


def tb_losses(run: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


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
