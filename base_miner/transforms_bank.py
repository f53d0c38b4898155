"""DNA-Det's pre-training task: which image transformation was applied? (docs/dnadet.md; shared other-detectors.md 2.3)

Classifying transformations teaches the network low-level, content-independent traces before it learns
generators. Each class is one transformation with fixed parameters, in PIL/numpy only (no albumentations/cv2):

    family          reference bank ("full", 170 classes)                         "reduced" (26, the CPU default)
    jpeg            quality 30..99 step 3                               (24)     30, 51, 72, 93
    double_jpeg     q1 as above, then q2 from DOUBLE_JPEG_Q2 (cycled)   (24)     the same four q1
    gaussian_blur   kernel 3..29 odd, sigma from the kernel as cv2 does (14)     3, 7, 11
    median_blur     kernel 3..29 odd                                    (14)     3, 5, 7
    resize          down to scale 0.15..0.90 step 0.05 and back up,     (80)     0.25, 0.5, 0.75 x nearest, bilinear,
                    x nearest, bilinear, bicubic, lanczos, box                   bicubic
    gaussian_noise  variance 10..49 step 3 (on 0..255)                  (14)     10, 25, 49

Approximations: the reference's q2 list was not readable, so DOUBLE_JPEG_Q2 is ours; PIL's `box` stands in for
cv2's INTER_AREA and `lanczos` for INTER_LANCZOS4; the blur kernel is not truncated at k (scipy's default 4 sigma).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from base_miner.data import gaussian_blur, jpeg_roundtrip

JPEG_QUALITIES = tuple(range(30, 100, 3))
DOUBLE_JPEG_Q2 = (95, 90, 85, 80, 75, 70)
BLUR_KERNELS = tuple(range(3, 30, 2))
RESIZE_SCALES = tuple(round(0.15 + 0.05 * i, 2) for i in range(16))
RESIZE_MODES = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                "box": Image.Resampling.BOX}
NOISE_VARIANCES = tuple(range(10, 50, 3))


def cv2_sigma(kernel: int) -> float:
    """The sigma cv2.GaussianBlur derives from a kernel size when sigma=0 (what the reference passes)."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def _jpeg(img: np.ndarray, rng, quality: int) -> np.ndarray:
    return jpeg_roundtrip(img, quality)


def _double_jpeg(img: np.ndarray, rng, q1: int, q2: int) -> np.ndarray:
    return jpeg_roundtrip(jpeg_roundtrip(img, q1), q2)


def _gaussian_blur(img: np.ndarray, rng, kernel: int) -> np.ndarray:
    return gaussian_blur(img, cv2_sigma(kernel))


def _median_blur(img: np.ndarray, rng, kernel: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).filter(ImageFilter.MedianFilter(kernel)))


def _resize(img: np.ndarray, rng, scale: float, mode: str) -> np.ndarray:
    """Down to `scale` and back to the original size with the same interpolation (a resize round trip)."""
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))), RESIZE_MODES[mode])
    return np.asarray(small.resize((w, h), RESIZE_MODES[mode]))


def _gaussian_noise(img: np.ndarray, rng: np.random.Generator, variance: float) -> np.ndarray:
    noisy = img.astype(np.float32) + rng.normal(0.0, variance ** 0.5, img.shape).astype(np.float32)
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


_APPLY = {"jpeg": _jpeg, "double_jpeg": _double_jpeg, "gaussian_blur": _gaussian_blur,
          "median_blur": _median_blur, "resize": _resize, "gaussian_noise": _gaussian_noise}


@dataclass(frozen=True)
class Transform:
    """One class of the bank: a transformation family with fixed parameters. Called on uint8 HxWx3 arrays."""

    kind: str
    params: tuple

    @property
    def name(self) -> str:
        return f"{self.kind}({','.join(str(p) for p in self.params)})"

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _APPLY[self.kind](img, rng, *self.params)


def make_bank(jpeg=JPEG_QUALITIES, blur=BLUR_KERNELS, median=BLUR_KERNELS, scales=RESIZE_SCALES,
              modes=tuple(RESIZE_MODES), noise=NOISE_VARIANCES) -> list[Transform]:
    """The classes, in label order, for the given parameter lists (the defaults give the reference's 170)."""
    return ([Transform("jpeg", (q,)) for q in jpeg]
            + [Transform("double_jpeg", (q, DOUBLE_JPEG_Q2[i % len(DOUBLE_JPEG_Q2)])) for i, q in enumerate(jpeg)]
            + [Transform("gaussian_blur", (k,)) for k in blur]
            + [Transform("median_blur", (k,)) for k in median]
            + [Transform("resize", (s, m)) for s in scales for m in modes]
            + [Transform("gaussian_noise", (v,)) for v in noise])


BANKS = {
    "full": make_bank,
    "reduced": lambda: make_bank(jpeg=(30, 51, 72, 93), blur=(3, 7, 11), median=(3, 5, 7), scales=(0.25, 0.5, 0.75),
                                 modes=("nearest", "bilinear", "bicubic"), noise=(10, 25, 49)),
}


def get_bank(name: str) -> list[Transform]:
    if name not in BANKS:
        raise ValueError(f"unknown transform bank {name!r}; choose from {', '.join(BANKS)}")
    return BANKS[name]()
