"""Validator challenges: one image, its label (1 = AI-generated, 0 = real) and a JSON record of how it was made.

Each challenge starts from a window of a real photo (even offset, ~1.3x the output size so a rotation still
fits). A fake is made from the SAME kind of window (procedural: re-rendered; diffusers: generated, prompted by
the photo), and then both classes go through the same augmentation-level distribution. So label and
post-processing are independent: only the generator step tells the classes apart. The same photo (and so the
same source crop) is never served twice in a row.
"""
from __future__ import annotations

import threading

import numpy as np
from PIL import Image

from bitmind_lite.data.augment import DEFAULT_LEVEL_PROBS, augment, parse_level_probs, window_side
from bitmind_lite.data.phash import RecentHashes
from bitmind_lite.data.photo import SourceError, content_box, ensure_min_size
from bitmind_lite.data.real import RealSource
from bitmind_lite.data.sources import open_fake_source, open_real_source


DEDUP_REDRAWS = 5  # bounded: a tiny pool may have nothing new to offer, then the last draw is served anyway


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


class ChallengeSampler:
    """`sample(rng) -> (PIL RGB size x size, label, meta)`. `real`/`fake`: a spec, a source, or a list of them."""

    def __init__(self, real="bundled", fake="procedural", fake_prob: float = 0.5, size: int = 256,
                 level_probs: dict[int, float] | str | None = None, seed: int | None = None,
                 fake_options: dict | None = None, dedup: bool = True):
        if not 0.0 <= float(fake_prob) <= 1.0:
            raise ValueError(f"fake_prob must be in [0, 1], got {fake_prob}")
        if int(size) < 32 or int(size) % 2:
            raise ValueError(f"size must be an even number >= 32, got {size}")
        self.fake_prob, self.size = float(fake_prob), int(size)
        self.level_probs = parse_level_probs(level_probs if level_probs is not None else DEFAULT_LEVEL_PROBS)
        self.reals: list[RealSource] = [r if isinstance(r, RealSource) else open_real_source(r) for r in _as_list(real)]
        # fake_options (device, steps, caption_model, ...) are for diffusers specs; procedural takes none here
        self.fakes = [f if hasattr(f, "make") else
                      open_fake_source(f, **({} if f.startswith("procedural") else (fake_options or {})))
                      for f in _as_list(fake)]
        if not self.reals or not self.fakes:
            raise SourceError("a challenge sampler needs at least one real and one fake source")
        self.rng = np.random.default_rng(seed)
        # perceptual-hash memory of served images: a near-duplicate (same window, flipped, re-compressed ...) of a
        # recent challenge is redrawn, so a miner cannot answer from its memory of earlier rounds
        self.recent = RecentHashes() if dedup else None
        self._last: tuple | None = None  # (real spec, photo id, box) of the previous challenge
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"real": [r.describe() for r in self.reals], "fake": [f.describe() for f in self.fakes],
                "fake_prob": self.fake_prob, "size": self.size, "level_probs": self.level_probs}

    def _window(self, rng: np.random.Generator):
        """A real photo window different from the previous challenge's (different photo when there is a choice)."""
        side = window_side(self.size)
        real = self.reals[int(rng.integers(len(self.reals)))]
        last_photo = self._last[1] if self._last and self._last[0] == real.spec else None
        for _ in range(20):  # bounded; a repeat needs the same photo AND the same box, rare after one retry
            photo = real.pick(rng, avoid=last_photo)
            canvas = ensure_min_size(photo.image, side)
            box = content_box(rng, canvas, side)
            if (real.spec, photo.id, box) != self._last:
                break
        self._last = (real.spec, photo.id, box)
        return real, photo, canvas.crop(box), box

    def sample(self, rng: np.random.Generator | None = None) -> tuple[Image.Image, int, dict]:
        rng = self.rng if rng is None else rng
        with self._lock:
            for redraws in range(DEDUP_REDRAWS + 1):
                image, label, meta = self._draw(rng)
                if self.recent is None or self.recent.admit(image) or redraws == DEDUP_REDRAWS:
                    break
            meta["dedup_redraws"] = redraws
        return image, label, meta

    def _draw(self, rng: np.random.Generator) -> tuple[Image.Image, int, dict]:
        label = int(rng.random() < self.fake_prob)
        real, photo, window, box = self._window(rng)
        meta = {"label": label, "real_source": real.spec, "photo": photo.id, "window": list(box),
                "photo_origin": photo.info.get("origin"), "photo_licence": photo.info.get("licence")}
        if label:
            fake = self.fakes[int(rng.integers(len(self.fakes)))]
            window, params = fake.make(photo, box, rng)
            meta.update(source=fake.spec, family=params["family"], generator_params=params)
        else:
            meta.update(source=real.spec, family="real", generator_params=None)
        image, meta["augmentation"] = augment(window, rng, self.size, self.level_probs)
        return image, label, meta

    def close(self) -> None:
        for f in self.fakes:
            f.close()


_default: ChallengeSampler | None = None


def sample_challenge(rng: np.random.Generator, sampler: ChallengeSampler | None = None) -> tuple[Image.Image, int, dict]:
    """One challenge from `sampler` or from a shared default ChallengeSampler() (bundled + procedural, 50/50)."""
    global _default
    if sampler is None:
        if _default is None:
            _default = ChallengeSampler()
        sampler = _default
    return sampler.sample(rng)
