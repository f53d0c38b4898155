"""The dataset folder layout: the one contract between the dataset builder and the training/evaluation scripts.

    ROOT/<split>/<class>/0_real/NNNNN.png     split: train, val, test; class: a generator family (or fake spec)
    ROOT/<split>/<class>/1_fake/NNNNN.png     a real and a fake with the same name are one pair
    ROOT/test/real_holdout/0_real/            reals only, from photos never used in train/val
    ROOT/manifest.json                        sources, licences, parameters, seed, counts, photo split
    ROOT/records/<split>__<class>.jsonl       one line per pair: photo, window, generator and augmentation params

It is the CNNDetection layout (Wang et al. 2020) that NPR's scripts read, plus the manifest and records, so
`base_miner/` also reads folders that were not built here. Light on purpose: no torch, no PIL.
"""
from __future__ import annotations

import json
from pathlib import Path

SPLITS = ("train", "val", "test")
REAL_DIR, FAKE_DIR = "0_real", "1_fake"
LABELS = {REAL_DIR: 0, FAKE_DIR: 1}  # label 1 = AI-generated
HOLDOUT_CLASS = "real_holdout"  # test/ folder of unseen real photos (no fakes)
MANIFEST = "manifest.json"
RECORDS_DIR = "records"
FORMAT = "bitmind-lite-dataset/1"
DESCRIPTION = (f"SPLIT/CLASS/{{{REAL_DIR},{FAKE_DIR}}}/NNNNN.png; a real and a fake with the same name are one pair "
               "(same photo window, same flip and augmentation)")
RECORDS_DESCRIPTION = f"{RECORDS_DIR}/<split>__<class>.jsonl"


def image_name(index: int) -> str:
    return f"{index:05d}.png"


def pair_paths(root: Path, split: str, cls: str, index: int) -> tuple[Path, Path | None]:
    """(real path, fake path) of one pair; the held-out real class has no fake."""
    d = Path(root) / split / cls
    name = image_name(index)
    return d / REAL_DIR / name, (None if cls == HOLDOUT_CLASS else d / FAKE_DIR / name)


def records_path(root: Path, split: str, cls: str) -> Path:
    return Path(root) / RECORDS_DIR / f"{split}__{cls}.jsonl"


def read_manifest(root: Path) -> dict:
    """The manifest of a built dataset, or a ValueError saying how to build one."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{root}: no {MANIFEST} (build it with `bitmind-lite data build --out {root}`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); rebuild the dataset") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} manifest; rebuild the dataset")
    return manifest
