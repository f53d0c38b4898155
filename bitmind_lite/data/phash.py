"""Perceptual hashes (DCT pHash) and a bounded memory of recently served images.

    h = phash(img)                          # 64-bit int: signs of the 8x8 lowest DCT frequencies of a 32x32 grey
    hamming(h, phash(other)) <= 10          # near-duplicate (re-encoded, noised, slightly shifted)
    recent = RecentHashes(capacity=4096, threshold=10)
    if recent.admit(img): serve(img)        # False: too close to an image served recently; draw another

Why: a validator that re-serves (nearly) the same image lets a miner answer from memory: once a served image's
label is known (from scores, from a colluding validator's log), every near copy of it is free. pHash survives the
validator's own post-processing (JPEG, noise, colour, a few pixels of crop), so it catches those copies where a
byte hash would not. `dihedral=True` (the default) also catches flipped and 90-degree-rotated copies: flipping an
image only flips the signs of odd DCT frequencies, so all 8 variants come from one DCT.
"""
from __future__ import annotations

from collections import deque

import numpy as np
from PIL import Image
from scipy.fft import dctn

HASH_SIZE = 8  # 8x8 = 64 bits
SAMPLE_SIZE = 32  # the image is reduced to 32x32 grey first (area average)
DEFAULT_THRESHOLD = 10  # bits. Measured on 256 crops of the 67 bundled photos: JPEG q50 or noise sigma 8 median 0
# (90th percentile 3-4), the crop shifted 8 px median 8, 16 px median 14, another photo 22-42 (median 32)


def _low_dct(img: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    grey = img.convert("L").resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.BOX)
    return dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:HASH_SIZE, :HASH_SIZE]


def _bits(coeffs: np.ndarray) -> int:
    bits = (coeffs > np.median(coeffs)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash(img: Image.Image | np.ndarray) -> int:
    """The 64-bit DCT perceptual hash of an image (PIL or HxW[x3] uint8 array)."""
    return _bits(_low_dct(img))


def dihedral_hashes(img: Image.Image | np.ndarray) -> list[int]:
    """pHashes of the image's 8 flips/90-degree rotations (the first is `phash(img)`), from a single DCT:
    a left-right flip negates the odd horizontal frequencies, an up-down flip the odd vertical ones, a transpose
    transposes the coefficients."""
    d = _low_dct(img)
    odd = np.where(np.arange(HASH_SIZE) % 2, -1.0, 1.0)
    out = []
    for c in (d, d.T):
        for sy in (1.0, -1.0):
            for sx in (1.0, -1.0):
                out.append(_bits(c * np.where(sy < 0, odd, 1.0)[:, None] * np.where(sx < 0, odd, 1.0)[None, :]))
    return out


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class RecentHashes:
    """The pHashes of the last `capacity` admitted images (bounded memory: a deque of ints) and a near-duplicate
    test against them: within `threshold` bits of any remembered hash (of any flip/rotation with `dihedral`)."""

    def __init__(self, capacity: int = 4096, threshold: int = DEFAULT_THRESHOLD, dihedral: bool = True):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 0 <= threshold < HASH_SIZE * HASH_SIZE:
            raise ValueError(f"threshold must be in 0..{HASH_SIZE * HASH_SIZE - 1} bits, got {threshold}")
        self.capacity, self.threshold, self.dihedral = capacity, threshold, dihedral
        self._hashes: deque[int] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self._hashes)

    def distance(self, img: Image.Image | np.ndarray) -> int | None:
        """Smallest Hamming distance from the image (any variant) to a remembered hash; None when empty."""
        if not self._hashes:
            return None
        queries = dihedral_hashes(img) if self.dihedral else [phash(img)]
        return min(hamming(q, h) for h in self._hashes for q in queries)

    def is_near_duplicate(self, img: Image.Image | np.ndarray) -> bool:
        d = self.distance(img)
        return d is not None and d <= self.threshold

    def add(self, img: Image.Image | np.ndarray) -> int:
        h = phash(img)
        self._hashes.append(h)  # the deque drops the oldest beyond capacity
        return h

    def admit(self, img: Image.Image | np.ndarray) -> bool:
        """Remember the image and return True, unless it is a near-duplicate of a recent one (then False)."""
        if self.is_near_duplicate(img):
            return False
        self.add(img)
        return True
