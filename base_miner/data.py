"""CNNDetection-layout image folders, the NPR training augmentations and the training sampler.

Layout (Wang et al. 2020, used by NPR): `root/<class or generator>/.../0_real|1_fake/*.png`; label 1 = AI-generated.
A folder may also hold `0_real`/`1_fake` itself. Multi-category generators (e.g. `cyclegan/apple/0_real`) are
concatenated, as the reference evaluation does. `bitmind-lite data build` writes one such folder per generator
family, so "class" and "family" are the same thing here.

Augmentations never resize (NPR reads the up-sampling traces that interpolation would overwrite): small images are
tiled, large ones are randomly cropped. Blur and JPEG are applied with the same probability to both classes, so the
only thing separating real from fake stays the generator step.
Every random choice comes from a generator seeded by (seed, epoch, draw), where `draw` is the sample's position in
the epoch's order: the same draw gets the same crop whichever worker or DDP rank loads it, so runs are reproducible,
1-process and N-process runs see identical batches, and a resumed run continues mid-epoch exactly.
Training samples travel as uint8 HxWx3 (4x less to copy than float); `normalize_batch` turns a whole batch into the
ImageNet-normalised NCHW (channels_last) tensor on the training device in one vectorised step.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter

from bitmind_lite.data.layout import LABELS
from bitmind_lite.detectors.base import IMAGENET_MEAN, IMAGENET_STD

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
JPEG_METHODS = ("pil", "cv2")

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


def split_families(dataroot: str | os.PathLike, split: str, classes: Sequence[str] = ()) -> dict[str, list[Sample]]:
    """{family folder: its samples} of `dataroot/split` (e.g. train or val), restricted to `classes` when given."""
    return {name: collect_samples(folder) for name, folder in group_folders(Path(dataroot) / split, classes).items()}


def split_samples(dataroot: str | os.PathLike, split: str, classes: Sequence[str] = ()) -> list[Sample]:
    """All samples of `dataroot/split`, family folders concatenated."""
    return [s for samples in split_families(dataroot, split, classes).values() for s in samples]


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


# ------------------------------------------------------------------ pixels (uint8 HxWx3 numpy arrays)

def decode(path) -> np.ndarray:
    """An image file (path or file object) as a uint8 HxWx3 array (one copy: no conversion when it is RGB)."""
    with Image.open(path) as im:
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def tile_to(img: np.ndarray, size: int) -> np.ndarray:
    """Repeat a too-small image until both sides reach `size` (the reference's "translate_duplicate"; no resize)."""
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    return np.tile(img, (-(-size // h) if h < size else 1, -(-size // w) if w < size else 1, 1))


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """CNNDetection's blur: scipy's gaussian_filter on each colour channel (sigma in pixels)."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(img.astype(np.float32), sigma=(sigma, sigma, 0))
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def jpeg_roundtrip(img: np.ndarray | Image.Image, quality: int) -> np.ndarray:
    """Encode at `quality` (libjpeg, 4:2:0, the defaults of both the reference's cv2 and pil methods) and decode."""
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return decode(buf)


class Augment:
    """CNNDetection's data_augment (blur, then JPEG), then a random crop without resize and a horizontal flip.

    `jpg_method` accepts the reference's names, cv2 and pil; both encode with libjpeg at the given quality and
    4:2:0 chroma (the two libraries' defaults), here through PIL, so a reference command line runs unchanged.

    `level_probs` (off by default) also runs the validator's augmentation levels (bitmind_lite.data.augment: rotate,
    flips, colour, noise, blur, JPEG) in place of the plain random crop. Datasets from `bitmind-lite data build`
    already bake those levels in, once per pair, so turning them on again is for data that lacks them (the
    CNNDetection set) or for more variety per epoch.
    """

    def __init__(self, crop_size: int = 224, blur_prob: float = 0.0, blur_sig=(0.0, 3.0), jpg_prob: float = 0.0,
                 jpg_qual=(30, 100), jpg_method: Sequence[str] = ("pil",), flip: bool = True,
                 level_probs: dict[int, float] | None = None):
        unknown = [m for m in jpg_method if m not in JPEG_METHODS]
        if unknown or not jpg_method:
            raise ValueError(f"--jpg_method {','.join(jpg_method)}: choose from {', '.join(JPEG_METHODS)}")
        self.crop_size, self.flip, self.level_probs = crop_size, flip, level_probs
        self.blur_prob, self.blur_sig = blur_prob, blur_sig
        self.jpg_prob, self.jpg_qual, self.jpg_method = jpg_prob, jpg_qual, tuple(jpg_method)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.blur_prob > 0 and rng.random() < self.blur_prob:
            img = gaussian_blur(img, float(rng.uniform(*self.blur_sig)))
        if self.jpg_prob > 0 and rng.random() < self.jpg_prob:
            rng.integers(len(self.jpg_method))  # the reference's method draw; both names encode the same way here
            img = jpeg_roundtrip(img, int(rng.integers(self.jpg_qual[0], self.jpg_qual[1] + 1)))
        size = self.crop_size
        img = tile_to(img, size)
        if self.level_probs:
            from bitmind_lite.data.augment import augment

            out, _params = augment(Image.fromarray(img), rng, size=size, level_probs=self.level_probs)
            img = np.asarray(out)
        else:
            h, w = img.shape[:2]
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            img = img[top:top + size, left:left + size]  # a view: no copy yet
        if self.flip and rng.random() < 0.5:
            img = img[:, ::-1]
        return img


class DecodedImages:
    """uint8 HxWx3 images of a sample list: decoded from disk on every access, or decoded once into RAM (`cache`).

    The cache is one contiguous array when every image has the same shape (what the dataset builder writes): loader
    workers forked after it is filled share its pages instead of copying them.
    """

    def __init__(self, paths: Sequence[str], cache: bool = False, progress: bool = False):
        self.paths, self.cached = list(paths), None
        if cache and self.paths:
            from tqdm import tqdm

            arrays = [decode(p) for p in tqdm(self.paths, desc="decode cache", unit="img", disable=not progress,
                                              leave=False)]
            same = all(a.shape == arrays[0].shape for a in arrays)
            self.cached = np.stack(arrays) if same else arrays

    @property
    def nbytes(self) -> int:
        return 0 if self.cached is None else sum(a.nbytes for a in self.cached) if isinstance(self.cached, list) \
            else self.cached.nbytes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return decode(self.paths[i]) if self.cached is None else self.cached[i]


class TrainDataset(torch.utils.data.Dataset):
    """(uint8 HxWx3 tensor, label) for a key (index, draw) from `EpochSampler`; call `set_epoch` before each epoch."""

    def __init__(self, samples: list[Sample], augment: Augment, seed: int = 0, cache: bool = False,
                 progress: bool = False):
        self.labels = [label for _, label in samples]
        self.images = DecodedImages([p for p, _ in samples], cache=cache, progress=progress)
        self.augment, self.seed, self.epoch = augment, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key):
        i, draw = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng((self.seed, self.epoch, draw))
        img = self.augment(self.images[i], rng)
        # the one copy of the pipeline: crop and flip were views (of the cache, when there is one)
        return torch.from_numpy(np.array(img, order="C")), torch.tensor(float(self.labels[i]))


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)


def normalize_batch(x: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 NxHxWx3 -> float32 NCHW, ImageNet-normalised as `to_normalized_tensor` does (x / 255 - mean) / std.

    The NHWC input permuted to NCHW already has channels_last strides, so channels_last costs no copy; the
    contiguous layout (for comparison, bench/train_speed.py) costs one.
    """
    x = x.permute(0, 3, 1, 2)
    x = x if channels_last else x.contiguous()
    scale = (1.0 / (255.0 * _STD)).to(x.device)
    return x.float().mul_(scale).add_((-_MEAN / _STD).to(x.device))


class EpochSampler(torch.utils.data.Sampler):
    """The order of one epoch, the same on every DDP rank, each rank taking an interleaved slice (DistributedSampler's
    scheme, so N ranks' per-rank batches together are exactly the 1-process batch). Yields (index, draw) keys.

    balance="none": a seeded permutation of all samples. balance="family": still len(samples) draws per epoch, but
    every family folder gets the same share and, within it, reals and fakes the same share: a family with more images
    is subsampled (without replacement), one with fewer is repeated; with equal counts it is a plain permutation.
    `set_epoch(epoch, start)` skips the first `start` keys of this rank (a run resumed mid-epoch).
    """

    def __init__(self, families: Sequence[str], labels: Sequence[int], balance: str = "family", seed: int = 0,
                 world: int = 1, rank: int = 0):
        if balance not in ("family", "none"):
            raise ValueError(f"--balance {balance!r}: choose family or none")
        if len(families) != len(labels) or not len(labels):
            raise ValueError("need one family and one label per sample, and at least one sample")
        self.balance, self.seed, self.world, self.rank = balance, seed, world, rank
        self.groups: dict[tuple[str, int], np.ndarray] = {}
        for i, key in enumerate(zip(families, labels)):
            self.groups.setdefault(key, []).append(i)
        self.groups = {k: np.array(v) for k, v in self.groups.items()}
        self.n, self.epoch, self.start = len(labels), 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def quotas(self) -> dict[tuple[str, int], int]:
        """Draws per (family, label) group in an epoch: equal per family, equal per label within a family."""
        per_family = {}
        for fam, _label in self.groups:
            per_family[fam] = per_family.get(fam, 0) + 1
        keys = list(self.groups)
        share = np.array([1.0 / (len(per_family) * per_family[f]) for f, _ in keys]) * self.n
        counts = np.floor(share).astype(int)
        for i in np.argsort(-(share - counts), kind="stable")[: self.n - int(counts.sum())]:
            counts[i] += 1  # largest remainders: exactly n draws in all
        return dict(zip(keys, counts.tolist()))

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, epoch, 0x5A3))
        if self.balance == "none":
            return rng.permutation(self.n)
        draws = []
        for key, quota in self.quotas().items():
            members = self.groups[key]
            cycles = -(-quota // len(members))
            draws.append(np.concatenate([rng.permutation(members) for _ in range(cycles)])[:quota])
        return rng.permutation(np.concatenate(draws))

    def _mine(self) -> np.ndarray:
        order = self.order(self.epoch)
        padded = np.concatenate([order, order[: (-len(order)) % self.world]])  # equal length on every rank
        return padded[self.rank::self.world]

    def __len__(self) -> int:
        return max(0, -(-self.n // self.world) - self.start)

    def __iter__(self):
        for pos, i in enumerate(self._mine()[self.start:], start=self.start):
            yield int(i), self.rank + pos * self.world  # draw = position in the global order


class EvalDataset(torch.utils.data.Dataset):
    """(tensor, label) through a detector's own `preprocess`, so evaluation sees exactly what a miner serves.

    `jpeg` re-encodes every image at that quality first (robustness tests: what a re-posted image goes through);
    `blur` applies a Gaussian blur of that sigma first (PIL's GaussianBlur radius is the sigma)."""

    def __init__(self, samples: list[Sample], preprocess, jpeg: int | None = None, blur: float | None = None):
        self.samples, self.preprocess, self.jpeg, self.blur = samples, preprocess, jpeg, blur

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as im:
            img = im.convert("RGB")
        if self.blur is not None:
            img = img.filter(ImageFilter.GaussianBlur(self.blur))
        if self.jpeg is not None:
            img = Image.fromarray(jpeg_roundtrip(img, self.jpeg))
        return self.preprocess(img), torch.tensor(float(label))


def loader(dataset, batch_size: int, workers: int = 0, sampler=None, pin_memory: bool = False
           ) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       persistent_workers=False, drop_last=False, pin_memory=pin_memory)
