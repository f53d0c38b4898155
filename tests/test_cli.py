"""`bitmind-lite` entry point and `bitmind-lite detect` on real files, through the installed console script."""
import json
import shutil
import subprocess
import sys

import pytest

from bitmind_lite.cli import COMMANDS, main


def _cli(*args, timeout=120):
    exe = shutil.which("bitmind-lite") or f"{sys.executable} -m bitmind_lite.cli"
    return subprocess.run([*exe.split(), *args], capture_output=True, text=True, timeout=timeout)


def test_usage_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    assert main(["no-such-command"]) == 2


def test_detect_prints_a_verdict_for_a_real_photo(tmp_path, real_photo):
    path = tmp_path / "coffee.jpg"
    real_photo.save(path, quality=95)
    r = _cli("detect", str(path), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    name, prob, verdict = line.split("\t")
    assert name == str(path) and verdict in ("real", "AI-generated")
    p = float(prob.split("=")[1])
    assert 0.0 <= p <= 1.0 and (verdict == "AI-generated") == (p > 0.5)


def test_detect_json_and_bad_files(tmp_path, real_photo):
    good = tmp_path / "a.png"
    real_photo.save(good)
    bad = tmp_path / "b.png"
    bad.write_text("not an image")
    r = _cli("detect", str(good), str(bad), "--json", "--detector", "random")
    assert r.returncode == 1  # one file failed: non-zero exit, but the good one is still scored
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["path"] == str(good) and 0 <= rows[0]["p_ai"] <= 1
    assert "b.png: cannot read image" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--detector", "nope"], "unknown detector"),
    (["--weights", "/nonexistent.pth"], "weights file not found"),
])
def test_detect_bad_options_exit_2_with_a_message(tmp_path, real_photo, args, message):
    path = tmp_path / "a.png"
    real_photo.save(path)
    r = _cli("detect", str(path), *args)
    assert r.returncode == 2 and message in r.stderr


def test_detect_a_directory_or_a_missing_file_exits_2_before_loading_a_model(tmp_path):
    (tmp_path / "photos").mkdir()
    # bad weights too: the paths are checked first, so no model (and no weights) is ever touched
    r = _cli("detect", str(tmp_path / "photos"), str(tmp_path / "gone.jpg"), "--weights", "/nonexistent.pth")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert f"{tmp_path / 'photos'}: is a directory; pass the image files in it" in r.stderr
    assert f"{tmp_path / 'gone.jpg'}: no such file" in r.stderr
    assert "weights file not found" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["text", "truncated", "wrong_shapes"])
def test_detect_with_weights_that_are_not_a_checkpoint_exits_2_naming_the_file(tmp_path, real_photo, kind):
    import torch

    from bitmind_lite.detectors import NPRNet

    weights = tmp_path / "npr.pth"
    if kind == "text":
        weights.write_text("model card: see README\n")
    elif kind == "truncated":
        torch.save(NPRNet().state_dict(), weights)
        weights.write_bytes(weights.read_bytes()[:4096])
    else:
        torch.save(torch.nn.Conv2d(3, 8, 3).state_dict(), weights)
    image = tmp_path / "a.png"
    real_photo.save(image)
    r = _cli("detect", str(image), "--weights", str(weights), "--device", "cpu")
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()  # one line, no traceback, no torch advice to load unsafely
    assert line.startswith(f"bitmind-lite detect: weights {weights} is not a checkpoint") and "expected" in line
    assert "weights_only" not in r.stderr
