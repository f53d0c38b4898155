"""CNNDetection-layout image folders and the NPR training augmentations.

Layout (Wang et al. 2020, used by NPR): `root/<class or generator>/.../0_real|1_fake/*.png`; label 1 = AI-generated.
A folder may also hold `0_real`/`1_fake` itself. Multi-category generators (e.g. `cyclegan/apple/0_real`) are
concatenated, as the reference evaluation does.

Augmentations never resize (NPR reads the up-sampling traces that interpolation would overwrite): small images are
tiled with the serving code's `crop_or_tile`, large ones are randomly cropped. Blur and JPEG are applied with the same
probability to both classes, so the only thing separating real from fake stays the generator step.
Every random choice comes from a generator seeded by (seed, epoch, index): the same sample gets the same crop whichever
worker or DDP rank loads it, so runs are reproducible and 1-process and N-process runs see identical batches.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from bitmind_lite.detectors.base import crop_or_tile, to_normalized_tensor

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
LABELS = {"0_real": 0, "1_fake": 1}

Sample = tuple[str, int]  # (path, label)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def collect_samples(folder: str | os.PathLike) -> list[Sample]:
    """Every image under any `0_real`/`1_fake` folder below `folder` (itself included), sorted for reproducibility."""
    folder = Path(folder)
    samples: list[Sample] = []
    for dirpath, dirnames, _files in os.walk(folder):
        dirnames.sort()
        if Path(dirpath).name in LABELS:
            label = LABELS[Path(dirpath).name]
            samples += [(str(p), label) for p in list_images(Path(dirpath))]
    return samples


def is_labelled_folder(folder: Path) -> bool:
    return any((folder / name).is_dir() for name in LABELS)


def group_folders(root: str | os.PathLike, names: Sequence[str] = ()) -> dict[str, Path]:
    """The class/generator folders of `root` ({name: path}); `root` itself when it holds 0_real/1_fake.

    `names` picks a subset (the seed's `--classes car,cat`); a missing name is an error that lists what exists.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {root}")
    if is_labelled_folder(root):
        groups = {root.name: root}
    else:
        groups = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and collect_samples(p)}
    if names:
        missing = [n for n in names if n not in groups]
        if missing:
            raise ValueError(f"{root}: no class folder(s) {', '.join(missing)}; found: {', '.join(groups) or 'none'}")
        groups = {n: groups[n] for n in names}
    if not groups:
        raise ValueError(f"{root}: no 0_real/1_fake folders with images (expected root/<class>/0_real|1_fake/*.png)")
    return groups


def split_samples(dataroot: str | os.PathLike, split: str, classes: Sequence[str] = ()) -> list[Sample]:
    """All samples of `dataroot/split` (e.g. train or val), restricted to `classes` when given."""
    groups = group_folders(Path(dataroot) / split, classes)
    return [s for folder in groups.values() for s in collect_samples(folder)]


def parse_range(text: str, cast=float) -> tuple:
    """'0,3' -> (0.0, 3.0): a uniform range; a single value is a fixed one (CNNDetection's option format)."""
    try:
        values = tuple(cast(v) for v in str(text).split(",") if v.strip() != "")
    except ValueError:
        raise ValueError(f"expected a number or 'low,high', got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or values[0] > values[1]:
        raise ValueError(f"expected a number or 'low,high' with low <= high, got {text!r}")
    return values


class Augment:
    """Blur then JPEG (CNNDetection's data_augment, in PIL), random crop without resize, horizontal flip."""

    def __init__(self, crop_size: int = 224, blur_prob: float = 0.0, blur_sig=(0.0, 3.0), jpg_prob: float = 0.0,
                 jpg_qual=(30, 100), flip: bool = True):
        self.crop_size, self.flip = crop_size, flip
        self.blur_prob, self.blur_sig = blur_prob, blur_sig
        self.jpg_prob, self.jpg_qual = jpg_prob, jpg_qual

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        img = img.convert("RGB")
        if self.blur_prob > 0 and rng.random() < self.blur_prob:
            img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*self.blur_sig))))
        if self.jpg_prob > 0 and rng.random() < self.jpg_prob:
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=int(rng.integers(self.jpg_qual[0], self.jpg_qual[1] + 1)))
            img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        size = self.crop_size
        if min(img.size) < size:
            img = crop_or_tile(img, size)  # tiled, as the reference does for small GenImage images
        w, h = img.size
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        img = img.crop((left, top, left + size, top + size))
        if self.flip and rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class TrainDataset(torch.utils.data.Dataset):
    """(tensor, label) with augmentations seeded by (seed, epoch, index); call `set_epoch` before each epoch."""

    def __init__(self, samples: list[Sample], augment: Augment, seed: int = 0):
        self.samples, self.augment, self.seed, self.epoch = samples, augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        rng = np.random.default_rng((self.seed, self.epoch, i))
        with Image.open(path) as im:
            img = self.augment(im, rng)
        return to_normalized_tensor(img), torch.tensor(float(label))


class EvalDataset(torch.utils.data.Dataset):
    """(tensor, label) through a detector's own `preprocess`, so evaluation sees exactly what a miner serves."""

    def __init__(self, samples: list[Sample], preprocess):
        self.samples, self.preprocess = samples, preprocess

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as im:
            return self.preprocess(im.convert("RGB")), torch.tensor(float(label))


def loader(dataset, batch_size: int, workers: int = 0, sampler=None) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       persistent_workers=False, drop_last=False)
