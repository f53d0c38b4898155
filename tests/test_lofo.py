"""base_miner/lofo.py: the leave-one-family-out driver, end to end on a tiny dataset (subprocesses of the real
commands: bitmind-lite data build, base_miner/train.py, base_miner/test.py)."""
import json
from pathlib import Path

import pytest

from base_miner import lofo

TINY = ["--families", "nearest,bilinear,transposed", "--train", "8", "--val", "4", "--test-per-family", "4",
        "--size", "64", "--epochs", "1", "--batch_size", "4", "--crop_size", "48", "--input_size", "64",
        "--holdout-real", "6", "--val-photos", "4", "--build-workers", "1", "--jpeg", "75,90", "--seed", "0"]


@pytest.fixture(scope="module")
def lofo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lofo")
    assert lofo.main(TINY + ["--only", "nearest", "--arch", "npr,npr_raw", "--out", str(out)]) == 0
    return out


def test_lofo_trains_without_the_family_and_tests_on_it(lofo_run, capsys):
    result = json.loads((lofo_run / "lofo.json").read_text())
    assert result["left_out"] == ["nearest"] and result["failed"] == []
    cells = {(c["family"], c["arch"]): c for c in result["cells"]}
    assert set(cells) == {("nearest", "npr"), ("nearest", "npr_raw")}
    for (family, arch), c in cells.items():
        assert c["checkpoint"]["train_classes"] == ["bilinear", "transposed"]  # the left-out family was not trained on
        assert c["checkpoint"]["arch"] == arch and c["n"] == 8
        for key in ("acc", "ap", "auc", "brier", "real_holdout_acc"):
            assert 0 <= c[key] <= 1, (key, c)
        assert -1 <= c["mcc"] <= 1 and set(c["jpeg_acc"]) == {"75", "90"}
        test = json.loads((lofo_run / "results" / f"{family}__{arch}.json").read_text())
        assert set(test["rows"]) == {"nearest", "real_holdout"}  # the left-out family and the unseen reals
        assert c["acc"] == test["rows"]["nearest"]["acc"] and c["jpeg_acc"]["75"] == test["jpeg"]["75"]["rows"][
            "nearest"]["acc"]
    table = (lofo_run / "lofo.md").read_text()
    assert "| nearest | npr |" in table and "| nearest | npr_raw |" in table and "Acc@JPEG75" in table
    manifest = json.loads((lofo_run / "data" / "without-nearest" / "manifest.json").read_text())
    assert manifest["excluded_families"] == ["nearest"] and "nearest" not in manifest["classes"]["train"]
    commands = (lofo_run / "commands.sh").read_text().splitlines()
    assert len(commands) == 6 and sum("--exclude-family nearest" in c for c in commands) == 1
    assert sum("base_miner/train.py" in c for c in commands) == 2 and sum("--jpeg 75,90" in c for c in commands) == 2


def test_lofo_rerun_skips_finished_cells(lofo_run, capsys):
    before = (lofo_run / "commands.sh").read_text()
    assert lofo.main(TINY + ["--only", "nearest", "--arch", "npr,npr_raw", "--out", str(lofo_run)]) == 0
    assert (lofo_run / "commands.sh").read_text() == before  # nothing ran again: builds reused, cells skipped
    out = capsys.readouterr().out
    assert out.count("done before") == 2 and "reused" in out
    assert len(json.loads((lofo_run / "lofo.json").read_text())["cells"]) == 2


def test_lofo_input_errors_are_clear(tmp_path, capsys):
    assert lofo.main(TINY + ["--only", "zebra", "--out", str(tmp_path)]) == 2
    assert "zebra" in capsys.readouterr().err
    assert lofo.main(TINY + ["--out", str(tmp_path)]) == 2  # procedural-only mix: nothing to leave out by default
    assert "--include-procedural" in capsys.readouterr().err
    rc = lofo.main(TINY + ["--include-procedural", "--dry-run", "--arch", "npr", "--out", str(tmp_path / "dry")])
    assert rc == 0 and capsys.readouterr().out.count("base_miner/train.py") == 3  # one per family, nothing run
    assert not (tmp_path / "dry" / "data").exists()


def test_lofo_reuses_built_datasets_and_drops_the_family_with_its_semisynthetic_carriers(lofo_run, tmp_path):
    """--dataset: no builds; F leaves train/ and val/ via --classes, and so does every semisynthetic family whose
    regions may come from F's kind; a family only in --test-dataset shares one run trained on all of DATA."""
    import subprocess

    data = tmp_path / "zoo"
    build = lofo.bitmind_lite() + ["data", "build", "--out", str(data), "--families", "nearest,bilinear,semi_procedural",
                                   "--train", "12", "--val", "6", "--test-per-family", "4", "--size", "64",
                                   "--holdout-real", "6", "--val-photos", "4", "--workers", "1", "--seed", "0", "--quiet"]
    assert subprocess.run(build, cwd=lofo.ROOT).returncode == 0
    out = tmp_path / "lofo"
    argv = TINY + ["--dataset", str(data), "--test-dataset", str(lofo_run / "data" / "shared-test"),
                   "--include-procedural", "--only", "nearest,transposed", "--arch", "npr", "--out", str(out)]
    assert lofo.main(argv) == 0
    result = json.loads((out / "lofo.json").read_text())
    cells = {c["family"]: c for c in result["cells"]}
    assert cells["nearest"]["checkpoint"]["train_classes"] == ["bilinear"]  # nearest and semi_procedural left out
    assert sorted(cells["transposed"]["checkpoint"]["train_classes"]) == ["bilinear", "nearest", "semi_procedural"]
    assert json.loads((out / "results" / "nearest__npr.json").read_text())["dataroot"].startswith(str(data))
    commands = (out / "commands.sh").read_text()
    assert "data build" not in commands and commands.count("base_miner/train.py") == 2
    assert "--classes bilinear)" in commands and "all-of-zoo" in commands
    assert lofo.main(TINY + ["--test-dataset", str(data), "--out", str(tmp_path / "x")]) == 2  # needs --dataset


def test_lofo_trains_bts_with_its_own_script_without_the_family(lofo_run, tmp_path):
    """--arch bts: the classifier stage of base_miner/train_bts.py runs without F, on the given re-synthesizer."""
    import torch

    from bitmind_lite.detectors.bts import BTSConfig, BTSNet

    torch.manual_seed(0)
    init = tmp_path / "bts_init.pth"
    torch.save(BTSNet(BTSConfig(g0=8, g=8, d=2, c=2, scale=2, width=8, blocks=1)).state_dict(), init)
    out = tmp_path / "lofo"
    at = TINY.index("--epochs")
    argv = TINY[:at] + TINY[at + 2:] + [
        "--minutes", "5", "--dataset", str(lofo_run / "data" / "without-nearest"), "--test-dataset",
        str(lofo_run / "data" / "shared-test"), "--only", "bilinear,nearest", "--arch", "bts", "--out", str(out),
        "--train-args", f"--init {init} --fresh_cls --max_steps 3 --val_every 3"]
    assert lofo.main(argv) == 0
    cells = {c["family"]: c for c in json.loads((out / "lofo.json").read_text())["cells"]}
    assert cells["bilinear"]["checkpoint"]["train_classes"] == ["transposed"]  # bilinear left out
    assert cells["nearest"]["checkpoint"]["train_classes"] == ["bilinear", "transposed"]  # never in this dataset
    for c in cells.values():
        assert c["checkpoint"]["arch"] == "bts" and c["checkpoint"]["step"] == 3 and c["epochs"] > 0
        assert 0 <= c["acc"] <= 1 and 0 <= c["real_holdout_acc"] <= 1 and set(c["jpeg_acc"]) == {"75", "90"}
    commands = (out / "commands.sh").read_text()
    assert commands.count("base_miner/train_bts.py --stage cls") == 2 and "base_miner/train.py" not in commands
    assert "--niter" not in commands and "cls_best.pth --arch bts" in commands
