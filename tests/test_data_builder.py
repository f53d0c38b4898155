"""Dataset builder: exact CNNDetection layout, manifest, determinism, disjoint photo splits, leave-one-family-out,
real holdout, resume after interruption, clear errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bitmind_lite.data.builder import HOLDOUT_CLASS, BuildConfig, build_dataset
from bitmind_lite.data.procedural import FAMILIES

SMALL = dict(train=10, val=5, test_per_family=2, size=64, seed=3)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "a"
    manifest = build_dataset(BuildConfig(out=str(out), **SMALL), progress=False)
    return out, manifest


def test_layout_is_exact(built):
    out, manifest = built
    dirs = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir()}
    expected = {"records", "train", "val", "test"}
    for split, n_per_class in (("train", 2), ("val", 1)):
        for fam in FAMILIES:
            expected |= {f"{split}/{fam}", f"{split}/{fam}/0_real", f"{split}/{fam}/1_fake"}
            for label in ("0_real", "1_fake"):
                files = sorted(p.name for p in (out / split / fam / label).iterdir())
                assert files == [f"{i:05d}.png" for i in range(n_per_class)]
    for fam in FAMILIES:
        expected |= {f"test/{fam}", f"test/{fam}/0_real", f"test/{fam}/1_fake"}
    expected |= {f"test/{HOLDOUT_CLASS}", f"test/{HOLDOUT_CLASS}/0_real"}
    assert dirs == expected
    assert len(list((out / "test" / HOLDOUT_CLASS / "0_real").glob("*.png"))) == 2
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert files == {"manifest.json", "build.json"}
    for p in out.rglob("*.png"):
        with Image.open(p) as im:
            assert im.size == (64, 64) and im.mode == "RGB"


def test_manifest_records_sources_licences_and_params(built):
    out, manifest = built
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == 3 and manifest["size"] == 64
    assert manifest["real_sources"][0]["spec"] == "bundled"
    assert manifest["fake_sources"][0]["families"] == list(FAMILIES)
    used = {p.split(":", 1)[1] for s in ("train", "val", "test") for p in manifest["photos"][s]}
    lic = manifest["licences"]["bundled"]
    assert used == set(lic) and all(v["licence"] and v["origin"] for v in lic.values())
    assert manifest["counts"]["train/bicubic/1_fake"] == 2 and manifest["counts"][f"test/{HOLDOUT_CLASS}/0_real"] == 2
    records = [json.loads(line) for line in (out / "records" / "train__transposed.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1]
    for r in records:
        assert r["generator"]["family"] == "transposed" and "decoder_seed" in r["generator"]
        assert r["augmentation"]["size"] == 64 and r["window"][0] % 2 == 0


def test_photo_splits_are_disjoint(built):
    out, manifest = built
    photos = {s: set(manifest["photos"][s]) for s in ("train", "val", "test")}
    assert photos["train"] and photos["val"] and photos["test"]
    assert not (photos["train"] & photos["val"]) and not (photos["train"] & photos["test"])
    assert not (photos["val"] & photos["test"])
    for path in (out / "records").glob("*.jsonl"):  # every record agrees with its split's photo pool
        split = path.name.split("__")[0]
        for line in path.read_text().splitlines():
            assert f"bundled:{json.loads(line)['photo']}" in photos[split]


def test_pairs_share_window_and_postprocessing(built):
    """A real and its fake twin differ by the generator step only: each fake is far closer to its own real
    (same photo window, same flip, same augmentation) than to any other real of the split."""
    out, _ = built
    load = lambda p: np.asarray(Image.open(p), dtype=np.float32)  # noqa: E731
    reals = sorted((out / "train").glob("*/0_real/*.png"))
    for real_path in reals:
        fake = load(real_path.parent.parent / "1_fake" / real_path.name)
        dists = {r: np.abs(load(r) - fake).mean() for r in reals}
        assert min(dists, key=dists.get) == real_path
        assert dists[real_path] > 0


def test_deterministic_and_worker_independent(built, tmp_path):
    out, manifest = built
    again = build_dataset(BuildConfig(out=str(tmp_path / "b"), **SMALL), progress=False, workers=2)
    assert tree(tmp_path / "b") == tree(out)
    assert again["photos"] == manifest["photos"] and again["counts"] == manifest["counts"]
    other = build_dataset(BuildConfig(out=str(tmp_path / "c"), **dict(SMALL, seed=4, train=5, val=0, test_per_family=0)),
                          progress=False)
    assert other["photos"]["train"] != manifest["photos"]["train"]


def test_resume_after_interruption(tmp_path):
    cfg = BuildConfig(out=str(tmp_path / "d"), **dict(SMALL, test_per_family=1))
    build_dataset(cfg, progress=False)
    out = Path(cfg.out)
    reference = tree(out)
    # simulate a crash: a lost image, a half-written record line, the manifest not yet written
    (out / "train" / "nearest" / "1_fake" / "00001.png").unlink()
    rec = out / "records" / "val__bilinear.jsonl"
    rec.write_text(rec.read_text() + '{"split": "val", "cla')
    (out / "manifest.json").unlink()
    build_dataset(cfg, progress=False)
    assert tree(out) == reference and (out / "manifest.json").exists()
    assert len(rec.read_text().splitlines()) == 1
    with pytest.raises(FileExistsError, match="other settings"):
        build_dataset(BuildConfig(out=cfg.out, **dict(SMALL, seed=9)), progress=False)
    # the real pool changed since the first run (same seed, other split): an item whose photo is no longer in its
    # split's pool is rebuilt, so a resumed build never trains on a test photo
    test_photo = json.loads((out / "manifest.json").read_text())["photos"]["test"][0]
    rec = out / "records" / "train__nearest.jsonl"
    lines = [json.loads(line) for line in rec.read_text().splitlines()]
    lines[0]["real_source"], lines[0]["photo"] = test_photo.rsplit(":", 1)
    rec.write_text("".join(json.dumps(r) + "\n" for r in lines))
    (out / "manifest.json").unlink()
    manifest = build_dataset(cfg, progress=False)
    assert tree(out) == reference and test_photo not in manifest["photos"]["train"]
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a bitmind-lite dataset"):
        build_dataset(BuildConfig(out=str(tmp_path / "foreign"), **SMALL), progress=False)


def test_leave_one_family_out_and_real_holdout(tmp_path):
    from bitmind_lite.cli import main

    out = tmp_path / "lofo"
    rc = main(["data", "build", "--out", str(out), "--train", "8", "--val", "4", "--test-per-family", "1",
               "--size", "48", "--exclude-family", "bicubic", "--holdout-real", "9", "--val-photos", "3",
               "--levels", "0:1", "--quiet", "--workers", "1"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert "bicubic" not in manifest["classes"]["train"] and "bicubic" not in manifest["classes"]["val"]
    assert not (out / "train" / "bicubic").exists() and (out / "test" / "bicubic" / "1_fake" / "00000.png").exists()
    assert manifest["photo_pools"]["test"] == 9 and manifest["photo_pools"]["val"] == 3
    assert manifest["excluded_families"] == ["bicubic"]
    assert manifest["augmentation"]["level_probs"] == {"0": 1.0}


@pytest.mark.parametrize("argv,match", [
    (["--exclude-family", "lanczos"], "not among the families"),
    (["--holdout-real", "500"], "cannot hold out"),
    (["--real", "dir:/no/such/dir"], "is not a directory"),
    (["--fake", "procedural:nearest", "--exclude-family", "nearest"], "every family is excluded"),
    (["--size", "63"], "even number"),
    (["--levels", "7:1"], "level probabilities"),
])
def test_cli_bad_input_is_a_clear_error(tmp_path, capsys, argv, match):
    from bitmind_lite.cli import main

    rc = main(["data", "build", "--out", str(tmp_path / "e"), "--train", "2", "--val", "1", "--quiet"] + argv)
    assert rc == 2
    assert match in capsys.readouterr().err


def _work_or_die(item):
    """Runs in a builder worker (module level, so spawn can pickle it): the first worker to reach a train item 1 kills
    itself, once (the marker file says it happened)."""
    import os
    import signal

    from bitmind_lite.data.builder import _work

    marker = Path(os.environ["BITMIND_TEST_KILL_MARKER"])
    if item.split == "train" and item.index == 1 and not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return _work(item)


def test_a_killed_worker_is_a_clear_error_and_the_build_resumes(tmp_path, monkeypatch):
    """The OOM killer taking a builder worker must not hang the build: it stops with a message, keeps what it
    wrote, and the same command finishes it."""
    from bitmind_lite.data import builder as b

    cfg = BuildConfig(out=str(tmp_path / "k"), **SMALL)
    monkeypatch.setenv("BITMIND_TEST_KILL_MARKER", str(tmp_path / "killed-once"))
    monkeypatch.setattr(b, "_work", _work_or_die)
    with pytest.raises(RuntimeError, match="run the same command again"):
        build_dataset(cfg, progress=False, workers=2)
    assert (tmp_path / "killed-once").exists()
    monkeypatch.undo()
    manifest = build_dataset(cfg, progress=False, workers=2)
    assert sum(manifest["counts"].values()) == 2 * (10 + 5) + 2 * 2 * len(manifest["classes"]["test"]) - 2
