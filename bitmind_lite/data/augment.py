"""Augmentation levels 0-3, after the reference subnet's `apply_augmentation_by_level` (Nov 2024):

    0  crop only (even offset: the image's 2x2 grid is left as it was)
    1  rotate (bilinear, +-20 deg) -> crop inside the rotated area (no black corners) -> h/v flips
    2  level 1 + colour saturation, contrast and a JPEG re-encode
    3  level 2 with stronger colour/JPEG + Gaussian noise and Gaussian blur

We crop rather than resize: a resize re-interpolates every pixel and erases the up-sampling traces NPR reads.
Parameters are sampled once (`sample_params`) and applied by `apply`, so a real image and its fake twin can get
the very same post-processing, and every image records what was done to it. Ranges live in LEVELS (tests read
them from there).
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

DEFAULT_LEVEL_PROBS = {0: 0.25, 1: 0.45, 2: 0.15, 3: 0.15}  # the reference's mix
MAX_ANGLE = 20.0
LEVELS: dict[int, dict[str, tuple[float, float]]] = {
    0: {},
    1: {"angle": (-MAX_ANGLE, MAX_ANGLE)},
    2: {"angle": (-MAX_ANGLE, MAX_ANGLE), "saturation": (0.7, 1.3), "contrast": (0.75, 1.25),
        "jpeg_quality": (65, 95)},
    3: {"angle": (-MAX_ANGLE, MAX_ANGLE), "saturation": (0.5, 1.5), "contrast": (0.6, 1.4),
        "jpeg_quality": (50, 90), "noise_std": (0.002, 0.03), "blur_sigma": (0.3, 1.5)},
}
ROTATION_MARGIN = 1.3  # window side / output side that leaves room for a 20 degree rotation without corners


def window_side(size: int) -> int:
    """Side of the source window a sampler should cut so any level can crop `size` out of it (even)."""
    return int(math.ceil(size * ROTATION_MARGIN)) + 1 & ~1


def parse_level_probs(text: str | dict) -> dict[int, float]:
    """'0:.25,1:.45,2:.15,3:.15' (or a dict) -> normalised {level: p}; clear ValueError on bad input."""
    if isinstance(text, dict):
        items = [(int(k), float(v)) for k, v in text.items()]
    else:
        try:
            items = [(int(k), float(v)) for k, v in (part.split(":") for part in str(text).split(",") if part.strip())]
        except ValueError:
            raise ValueError(f"level probabilities {text!r}: expected LEVEL:P,... e.g. 0:.25,1:.45,2:.15,3:.15") from None
    if not items or any(k not in LEVELS or v < 0 for k, v in items) or sum(v for _, v in items) <= 0:
        raise ValueError(f"level probabilities {text!r}: levels must be in 0-3, probabilities >= 0 with a positive sum")
    total = sum(v for _, v in items)
    return {k: v / total for k, v in sorted(items)}


def sample_level(rng: np.random.Generator, level_probs: dict[int, float] | None = None) -> int:
    probs = level_probs or DEFAULT_LEVEL_PROBS
    levels = list(probs)
    return int(levels[int(rng.choice(len(levels), p=np.array([probs[k] for k in levels]) / sum(probs.values())))])


def _max_angle(in_side: int, out_side: int) -> float:
    """Largest rotation (degrees, <= MAX_ANGLE) whose inscribed axis-aligned square still holds `out_side`."""
    for deg in np.arange(MAX_ANGLE, 0.0, -0.5):
        t = math.radians(deg)
        if in_side / (math.cos(t) + math.sin(t)) >= out_side + 2:
            return float(deg)
    return 0.0


def sample_params(rng: np.random.Generator, level: int, in_size: tuple[int, int], size: int) -> dict:
    """Draw the parameters of one augmentation at `level` for an input of `in_size` (w, h) and output `size`."""
    if level not in LEVELS:
        raise ValueError(f"augmentation level must be 0-3, got {level!r}")
    w, h = in_size
    if w < size or h < size:
        raise ValueError(f"input {w}x{h} is smaller than the output size {size}")
    ranges = LEVELS[level]
    params: dict = {"level": level, "size": size}
    if level == 0:
        params["crop"] = [2 * int(rng.integers(0, (w - size) // 2 + 1)), 2 * int(rng.integers(0, (h - size) // 2 + 1))]
        return params
    limit = min(_max_angle(min(w, h), size), MAX_ANGLE)
    params["angle"] = round(float(rng.uniform(-limit, limit)), 3)
    t = math.radians(abs(params["angle"]))
    inner = int(min(w, h) / (math.cos(t) + math.sin(t)))  # the corner-free square around the centre
    slack = max(inner - size, 0)
    params["crop"] = [(w - inner) // 2 + int(rng.integers(0, slack + 1)), (h - inner) // 2 + int(rng.integers(0, slack + 1))]
    params["hflip"] = bool(rng.random() < 0.5)
    params["vflip"] = bool(rng.random() < 0.5)
    for key in ("saturation", "contrast", "noise_std", "blur_sigma"):
        if key in ranges:
            params[key] = round(float(rng.uniform(*ranges[key])), 4)
    if "noise_std" in ranges:
        params["noise_seed"] = int(rng.integers(2 ** 31 - 1))
    if "jpeg_quality" in ranges:
        lo, hi = ranges["jpeg_quality"]
        params["jpeg_quality"] = int(rng.integers(lo, hi + 1))
    return params


def apply(img: Image.Image, params: dict) -> Image.Image:
    """Apply recorded parameters (deterministic: the same params give the same output)."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    size = params["size"]
    if params.get("angle"):
        img = img.rotate(params["angle"], resample=Image.Resampling.BILINEAR, expand=False)
    x, y = params["crop"]
    img = img.crop((x, y, x + size, y + size))
    if params.get("hflip"):
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.get("vflip"):
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if "saturation" in params:
        img = ImageEnhance.Color(img).enhance(params["saturation"])
    if "contrast" in params:
        img = ImageEnhance.Contrast(img).enhance(params["contrast"])
    if "noise_std" in params:
        noise = np.random.default_rng(params["noise_seed"]).normal(0.0, params["noise_std"] * 255.0, (size, size, 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).round().astype(np.uint8))
    if "blur_sigma" in params:
        img = img.filter(ImageFilter.GaussianBlur(radius=params["blur_sigma"]))
    if "jpeg_quality" in params:  # last, as when an image is saved
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=params["jpeg_quality"])
        buf.seek(0)
        with Image.open(buf) as decoded:
            img = decoded.convert("RGB")
    return img


def augment(img: Image.Image, rng: np.random.Generator, size: int = 256,
            level_probs: dict[int, float] | None = None, level: int | None = None) -> tuple[Image.Image, dict]:
    """Sample a level (unless given) and its parameters, apply them; returns (image, params)."""
    level = sample_level(rng, level_probs) if level is None else level
    params = sample_params(rng, level, img.size, size)
    return apply(img, params), params
