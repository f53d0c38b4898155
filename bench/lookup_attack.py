"""Play a miner that labels challenges by LOOKUP: it holds every public photo the project ships (the `bundled` pool:
PyPI + Debian photos) and no detector at all. For a challenge it finds the best-matching public photo window
and compares pixels: a real challenge is a near-exact copy of that window (cropped, maybe rotated, flipped and
re-coloured), its fake twin has the same content but generator pixels. Tiny residual -> "real", else "fake";
no match -> 0.5 (a coin flip, counted as half right).

    .venv/bin/python bench/lookup_attack.py [--n 100] [--size 256] [--levels 0:.25,1:.45,2:.15,3:.15]
                                            [--fake procedural] [--json bench/results/lookup_attack.json]

Configurations:
  demo      the validator serves real=bundled (the default pool) and the attacker holds all of it
  private   the validator serves real=dir:TMP, a stand-in private pool: copies of the Debian photos, which the
            attacker's index leaves out (it holds only bundled:pypi). On a real network this is a private
            collection that nobody else has.

How it matches (within reason: a benchmark, not a research project):
  1. coarse: normalised cross-correlation (FFT, overlap-save tiles) of the challenge's central disk, which
     stays inside the challenge at any rotation, with every photo: the plain template at 1/8 first (a level-0
     challenge ends here); else 4 flips x 5 angles at 1/16 pick 3 candidate photos, and +-7.5 degrees around
     each one's best angle at 1/8 finds the window.
  2. fine: Gauss-Newton on (angle, centre, gain, offset) at 1/4, 1/2 and full resolution; then a per-channel
     colour fit (undoes level 2/3 saturation and contrast). A match needs the fitted photo to correlate with the
     challenge (>= 0.95) and so must its fine detail (>= 0.2: a wrong photo can match a smooth crop's shapes).
  3. answer: mean |residual| < 0.32 grey levels -> real (p=0), else fake (p=1); no match -> p=0.5.
The attacker does not know the level: levels 2-3 end with JPEG, noise and blur, which bury the real/fake pixel
difference, so there it is right about half the time; levels 0-1 (70% of challenges) it gets nearly all.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft as sfft
from scipy.ndimage import gaussian_filter, map_coordinates

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bitmind_lite.data.augment import MAX_ANGLE, parse_level_probs, window_side  # noqa: E402
from bitmind_lite.data.challenge import ChallengeSampler  # noqa: E402
from bitmind_lite.data.photo import ensure_min_size  # noqa: E402
from bitmind_lite.data.real import RealSource, open_real_source  # noqa: E402

SCALE = 8  # the window search runs at 1/8, the candidate search at 1/16
FLIPS = ((False, False), (True, False), (False, True), (True, True))  # (hflip, vflip)
ANGLES = (-20.0, -10.0, 0.0, 10.0, 20.0)  # candidate-search angles (level 1+ rotates by up to 20 degrees)
FINE_ANGLE_OFFSETS = (-7.5, -5.0, -2.5, 0.0, 2.5, 5.0, 7.5)  # degrees around a candidate's angle, at 1/8
CANDIDATES = 3  # photos the 1/16 search passes on to the 1/8 search
TILE, TILE_BATCH = 128, 16  # tile side at 1/8 (half that at 1/16); tiles per batched inverse FFT
MIN_STD = 2.0  # grey levels: flatter photo patches cannot be told apart, so they never match
EARLY_STOP_NCC = 0.97  # a plain-template correlation this high is taken as found (level 0)
MATCH_NCC = 0.75  # coarse correlation a candidate needs (the fine alignment then decides)
MATCH_NCC_FINE = 0.95  # correlation of the aligned, colour-fitted photo with the challenge that counts as a match
MATCH_DETAIL = 0.2  # ... and of their fine detail (measured: true matches >= 0.26, wrong photos ~0 +- 0.05)
REAL_RESIDUAL = 0.32  # grey levels. Measured at 256 px: real copies 0 (level 0) and 0.21-0.29 (level 1: PIL's
# rotation rounding), procedural twins 0.34-7.6; levels 2-3 (JPEG, noise, blur after the crop) overlap: 0.6-8.6
PYRAMID = ((4, 12), (2, 8), (1, 6))  # (reduction, Gauss-Newton iterations)


def _grey(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32)


def _reduce(img: Image.Image, k: int) -> Image.Image:
    return img if k == 1 else img.reduce(k)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a.ravel() @ b.ravel() / max(float(np.sqrt((a * a).sum() * (b * b).sum())), 1e-9))


def _warp(q: np.ndarray, theta: float, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Photo coordinates c + A(theta) q of centred challenge coordinates q (N x 2, flips already applied), where
    A is the inverse of PIL's rotation: PIL's rotate(angle) reads its input at A(-radians(angle))."""
    ct, st = math.cos(theta), math.sin(theta)
    return c[0] + ct * q[:, 0] + st * q[:, 1], c[1] - st * q[:, 0] + ct * q[:, 1]


def _disk(side: int, radius: float) -> np.ndarray:
    c = np.arange(side) + 0.5 - side / 2
    return (c[None, :] ** 2 + c[:, None] ** 2 <= radius ** 2).astype(np.float32)


@dataclass
class Match:
    photo: str
    hflip: bool
    vflip: bool
    angle: float  # degrees, as the augmentation recorded it
    cx: float  # photo coordinates (pixels) of the challenge centre
    cy: float
    ncc: float
    residual: float | None = None  # mean |challenge - aligned, colour-fitted photo| in grey levels
    detail: float | None = None  # correlation of their band-pass (fine detail) images


class Tiles:
    """One scale of the attacker's index: every photo reduced `scale` times, centred, cut into overlapping
    tile x tile tiles whose FFTs are taken once, and the local contrast of the disk template at every position.
    `search` correlates templates with all tiles (overlap-save: one inverse FFT per tile and template)."""

    def __init__(self, canvases: list[Image.Image], size: int, scale: int, tile: int):
        self.scale, self.tile, self.k = scale, tile, size // scale
        self.stride = tile - self.k + 1  # correlation outputs per tile side free of FFT wrap-around
        self.mask = _disk(self.k, self.k / 2 - 1.5)  # central disk: inside the challenge at any rotation
        self.n = float(self.mask.sum())
        ffts, sds, where = [], [], []
        for photo, canvas in enumerate(canvases):
            small = _grey(_reduce(canvas, scale)).astype(np.float64)
            small -= small.mean()  # float64 and centred: the local variance is a difference of large sums
            s1, s2 = (self._corr_full(a) for a in (small, small * small))
            # a flat patch (std < MIN_STD grey levels) identifies nothing: damp its correlation, never divide by ~0
            sd = np.sqrt(np.maximum(s2 - s1 * s1 / self.n, self.n * MIN_STD ** 2))
            ny, nx = -(-sd.shape[0] // self.stride), -(-sd.shape[1] // self.stride)  # tiles down and across
            small = np.pad(small, ((0, ny * self.stride + self.k - 1 - small.shape[0]),
                                   (0, nx * self.stride + self.k - 1 - small.shape[1])))
            sd = np.pad(sd, ((0, ny * self.stride - sd.shape[0]), (0, nx * self.stride - sd.shape[1])),
                        constant_values=np.inf)  # positions past the photo never win
            for ty in range(0, ny * self.stride, self.stride):
                for tx in range(0, nx * self.stride, self.stride):
                    ffts.append(sfft.rfft2(small[ty:ty + tile, tx:tx + tile]).astype(np.complex64))
                    sds.append(sd[ty:ty + self.stride, tx:tx + self.stride].astype(np.float32))
                    where.append((photo, ty, tx))
        self.ffts, self.sds, self.where = np.stack(ffts), np.stack(sds), np.array(where)

    def _corr_full(self, image: np.ndarray) -> np.ndarray:
        """sum_ij mask[i, j] * image[y + i, x + j] for every (y, x) where the mask fits."""
        shape = [sfft.next_fast_len(d + self.k - 1, real=True) for d in image.shape]
        out = sfft.irfft2(sfft.rfft2(image, shape) * sfft.rfft2(self.mask[::-1, ::-1], shape), shape)
        return out[self.k - 1:image.shape[0], self.k - 1:image.shape[1]]

    def templates(self, challenge: Image.Image, keys: list[tuple]) -> np.ndarray:
        """Unit-norm, zero-mean disk templates of the challenge brought back to photo orientation, one per
        (hflip, vflip, angle) key (un-flip, rotate back, reduce), zero-padded to the tile and transformed."""
        grey = challenge.convert("L")
        out = np.zeros((len(keys), self.tile, self.tile), np.float32)
        for i, (hflip, vflip, angle) in enumerate(keys):
            g = grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if hflip else grey
            g = g.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if vflip else g
            t = _grey(_reduce(g.rotate(-angle, resample=Image.Resampling.BILINEAR) if angle else g, self.scale))
            t = (t - (t * self.mask).sum() / self.n) * self.mask
            out[i, :self.k, :self.k] = t / max(float(np.sqrt((t * t).sum())), 1e-6)
        return np.conj(sfft.rfft2(out)).astype(np.complex64)  # conjugate: correlation, not convolution

    def search(self, challenge: Image.Image, keys: list[tuple], photos=None) -> dict[int, tuple]:
        """photo -> (ncc, key, centre x, centre y in photo pixels): each photo's best template and position."""
        f_temps = self.templates(challenge, keys)
        rows = np.arange(len(self.ffts)) if photos is None else np.flatnonzero(np.isin(self.where[:, 0], list(photos)))
        best: dict[int, tuple] = {}
        for start in range(0, len(rows), TILE_BATCH):
            sel = rows[start:start + TILE_BATCH]
            ncc = sfft.irfft2(self.ffts[sel, None] * f_temps[None], (self.tile, self.tile))
            ncc = ncc[..., :self.stride, :self.stride]
            ncc /= self.sds[sel, None]
            flat = ncc.reshape(len(sel), -1)
            for i, j in enumerate(np.argmax(flat, axis=1)):
                photo, ty, tx = self.where[sel[i]]
                if photo not in best or flat[i, j] > best[photo][0]:
                    t, y, x = np.unravel_index(j, ncc.shape[1:])
                    best[photo] = (float(flat[i, j]), keys[t], (tx + x + self.k / 2) * self.scale,
                                   (ty + y + self.k / 2) * self.scale)
        return best


class PublicIndex:
    """What the attacker holds: every photo of some real sources, as the sampler's canvases (small photos tiled),
    indexed at 1/16 (to pick candidate photos fast) and 1/8 (to find the window)."""

    def __init__(self, sources: list[RealSource], size: int = 256, skip: set[str] = frozenset()):
        self.size, self.side = size, window_side(size)
        self.sources: dict[str, RealSource] = {}
        self.photo_ids: list[str] = []
        canvases = []
        for src in sources:
            for pid in src.ids():
                photo = None if pid in skip else src.photo(pid)  # `skip`: photos the attacker does not hold
                if photo is not None:
                    self.sources[pid] = src
                    self.photo_ids.append(pid)
                    canvases.append(self._canvas(photo.image))
        if not canvases:
            raise ValueError("the attacker's index is empty: no readable photos in its sources")
        self.fine_grid = Tiles(canvases, size, SCALE, TILE)
        self.coarse_grid = Tiles(canvases, size, 2 * SCALE, TILE // 2)

    def _canvas(self, image: Image.Image) -> Image.Image:
        return ensure_min_size(image, self.side)  # what ChallengeSampler cuts windows from

    def __len__(self) -> int:
        return len(self.photo_ids)

    # ---- coarse search

    def coarse(self, challenge: Image.Image, rotations: bool = True) -> Match | None:
        """The best (photo, flip, angle, position) by normalised cross-correlation, or None below MATCH_NCC.
        1) the plain template at 1/8 over every photo: a level-0 challenge is found here and the search ends;
        2) 4 flips x 5 angles at 1/16 over every photo pick CANDIDATES photos and a rough flip and angle for each;
        3) that flip with angles +-7.5 degrees around it at 1/8 over each candidate."""
        found = self.fine_grid.search(challenge, [(False, False, 0.0)])
        if rotations and max(v[0] for v in found.values()) < EARLY_STOP_NCC:
            rough = self.coarse_grid.search(challenge, [(h, v, float(a)) for h, v in FLIPS for a in ANGLES])
            for photo in sorted(rough, key=lambda p: rough[p][0], reverse=True)[:CANDIDATES]:
                hflip, vflip, angle = rough[photo][1]
                keys = [(hflip, vflip, float(np.clip(angle + d, -MAX_ANGLE, MAX_ANGLE))) for d in FINE_ANGLE_OFFSETS]
                hit = self.fine_grid.search(challenge, list(dict.fromkeys(keys)), [photo])[photo]
                if hit[0] > found[photo][0]:
                    found[photo] = hit
        photo = max(found, key=lambda p: found[p][0])
        ncc, (hflip, vflip, angle), cx, cy = found[photo]
        return Match(self.photo_ids[photo], hflip, vflip, angle, cx, cy, ncc) if ncc >= MATCH_NCC else None

    # ---- fine alignment

    def refine(self, challenge: Image.Image, m: Match) -> Match:
        """Gauss-Newton on (angle, centre, gain, offset) from coarse to full resolution, then the colour-fitted
        residual at full resolution. The model: challenge pixel q (centred coordinates) shows the photo at
        c + A(theta) S q, with S the flips and A the inverse of PIL's rotation (theta = -angle)."""
        photo = self.sources[m.photo].photo(m.photo)
        canvas = self._canvas(photo.image)
        reach = int(self.size * 0.75) + 16  # a generous radius around the centre holds every sampled point
        x0, y0 = max(int(m.cx) - reach, 0), max(int(m.cy) - reach, 0)
        local = canvas.crop((x0, y0, min(int(m.cx) + reach, canvas.width), min(int(m.cy) + reach, canvas.height)))
        flip = np.array([-1.0 if m.hflip else 1.0, -1.0 if m.vflip else 1.0])
        theta, c = -math.radians(m.angle), np.array([m.cx - x0, m.cy - y0])
        for k, iters in PYRAMID:
            img = _grey(_reduce(local, k))
            gy, gx = np.gradient(img)
            chal = _grey(_reduce(challenge.convert("L"), k)).ravel()
            q = self._grid(k) * flip  # flips applied to the challenge grid
            for _ in range(iters):
                px, py = _warp(q, theta, c)
                idx = np.stack([py / k - 0.5, px / k - 0.5])
                v, vx, vy = (map_coordinates(a, idx, order=1, mode="nearest") for a in (img, gx, gy))
                # gain/offset in closed form, then a Gauss-Newton step on the geometry
                dv = v - v.mean()
                g = float(dv @ (chal - chal.mean()) / max(float(dv @ dv), 1e-6))
                b = float(chal.mean() - g * v.mean())
                r = chal - (g * v + b)
                dpx_dt, dpy_dt = _warp(q, theta + math.pi / 2, np.zeros(2))  # d/dtheta of the warp
                jac = g * np.stack([(vx * dpx_dt + vy * dpy_dt) / k, vx / k, vy / k], axis=1)
                step, *_ = np.linalg.lstsq(jac, r, rcond=None)
                theta += step[0]
                c = c + step[1:]
                if abs(step[0]) < 1e-6 and np.abs(step[1:]).max() < 1e-3:
                    break
        m.angle, m.cx, m.cy = -math.degrees(theta), c[0] + x0, c[1] + y0
        cmp = self._compare(challenge, np.asarray(local, dtype=np.float32), theta, c, flip)
        m.residual, m.ncc, m.detail = cmp["residual"], cmp["ncc"], cmp["detail"]
        return m

    def _grid(self, k: int) -> np.ndarray:
        """Centred full-resolution coordinates (x, y) of the pixel centres of the challenge reduced k times."""
        n = self.size // k
        u = (np.arange(n) + 0.5) * k - self.size / 2
        xx, yy = np.meshgrid(u, u)
        return np.stack([xx.ravel(), yy.ravel()], axis=1)

    def _compare(self, challenge, local_rgb, theta, c, flip) -> dict:
        """Sample the aligned photo at every challenge pixel and fit a per-channel colour map (level 2/3 saturation
        and contrast are linear). Returns the mean |residual| in grey levels, the correlation, and the correlation
        of fine detail (a band-pass): a wrong photo can match the coarse shapes of a smooth crop, not its detail."""
        px, py = _warp(self._grid(1) * flip, theta, c)
        idx = np.stack([py - 0.5, px - 0.5])
        pred = np.stack([map_coordinates(local_rgb[..., ch], idx, order=1, mode="nearest") for ch in range(3)], -1)
        design = np.concatenate([pred, np.ones_like(pred[:, :1])], axis=-1).reshape(self.size, self.size, 4)
        target = np.asarray(challenge, dtype=np.float32)
        inner = self._inner_mask()
        coef, *_ = np.linalg.lstsq(design[inner], target[inner], rcond=None)
        fitted = design @ coef
        grey_t, grey_f = target.mean(-1), fitted.mean(-1)
        band_t, band_f = (gaussian_filter(g, 0.7) - gaussian_filter(g, 2.0) for g in (grey_t, grey_f))
        return {"residual": float(np.abs(target[inner] - fitted[inner]).mean()),
                "ncc": _corr(grey_t[inner], grey_f[inner]), "detail": _corr(band_t[inner], band_f[inner])}

    def _inner_mask(self) -> np.ndarray:
        """All pixels but a 4-pixel border (where interpolation and blur see past the sampled area)."""
        u = np.arange(self.size)
        inside = (u >= 4) & (u < self.size - 4)
        return inside[:, None] & inside[None, :]


# ---------------------------------------------------------------- the miner and the benchmark


def attack(index: PublicIndex, challenge: Image.Image, rotations: bool = True) -> dict:
    """The lookup miner's answer: p = P(AI) in {0, 1, 0.5} and what it found."""
    m = index.coarse(challenge, rotations)
    if m is not None:
        m = index.refine(challenge, m)
    if m is None:
        return {"p": 0.5, "matched": False}
    found = {"matched_photo": m.photo, "residual": round(m.residual, 4), "ncc": round(m.ncc, 5),
             "detail": round(m.detail, 4), "angle": round(m.angle, 3), "flips": [m.hflip, m.vflip]}
    if m.ncc < MATCH_NCC_FINE or m.detail < MATCH_DETAIL:
        return {"p": 0.5, "matched": False, **found}
    return {"p": 0.0 if m.residual < REAL_RESIDUAL else 1.0, "matched": True, **found}


def evaluate(index: PublicIndex, sampler: ChallengeSampler, n: int, seed: int, rotations: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        image, label, meta = sampler.sample(rng)
        t0 = time.perf_counter()
        answer = attack(index, image, rotations)
        p = answer["p"]  # a coin flip (p = 0.5) is half right: the expected accuracy of guessing
        rows.append({"label": label, "level": meta["augmentation"]["level"], "family": meta["family"],
                     "photo": meta["photo"], "right": 0.5 if p == 0.5 else float((p > 0.5) == bool(label)),
                     "ms": round(1000 * (time.perf_counter() - t0), 1), **answer})
    return {"summary": summarise(rows), "rows": rows}


def summarise(rows: list[dict]) -> dict:
    def stats(sel):
        return {"n": len(sel), "accuracy": round(float(np.mean([r["right"] for r in sel])), 4) if sel else None,
                "matched": round(float(np.mean([r["matched"] for r in sel])), 4) if sel else None}

    out = stats(rows)
    out["by_level"] = {lv: stats([r for r in rows if r["level"] == lv]) for lv in sorted({r["level"] for r in rows})}
    out["by_class"] = {name: stats([r for r in rows if r["label"] == lab]) for lab, name in ((0, "real"), (1, "fake"))}
    lo, hi = binomial_interval(len(rows))
    out["chance_99"] = [round(lo, 4), round(hi, 4)]
    out["ms_median"] = float(np.median([r["ms"] for r in rows])) if rows else None
    return out


def binomial_interval(n: int, z: float = 2.576) -> tuple[float, float]:
    """Where a coin-flipping miner's accuracy lands 99% of the time over n challenges (normal approximation)."""
    half = z * math.sqrt(0.25 / max(n, 1))
    return max(0.5 - half, 0.0), min(0.5 + half, 1.0)


def stand_in_private_pool(folder: Path, spec: str = "bundled:debian", ids: list[str] | None = None) -> Path | None:
    """Copies of some bundled photos (default: the Debian ones) as a stand-in for a validator's private collection:
    copies, not links, so the pool is not public by path; the attacker's index leaves them out. None when absent."""
    src = open_real_source(spec)
    paths = {pid: path for pid, path in src.paths.items() if ids is None or pid in ids}
    if not paths:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for pid, path in paths.items():
        shutil.copyfile(path, folder / f"{pid.replace('/', '__')}{path.suffix}")
    return folder


def run(n: int, size: int, levels: str, fake: str, seed: int, log=print) -> dict:
    # level 0 never rotates or flips: with no other level the search skips those templates (the tests use this)
    rotations = any(lv > 0 and p > 0 for lv, p in parse_level_probs(levels).items())
    results = {"n": n, "size": size, "levels": levels, "fake": fake, "seed": seed, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="lookup-private-") as tmp:
        private = stand_in_private_pool(Path(tmp) / "photos")
        configs = [("demo", "bundled", ["bundled"], "validator real=bundled (the demo default); the attacker "
                    "holds every bundled photo")]
        if private is None:
            log(f"[private] skipped: the stand-in private pool is made of the Debian photos, which are not "
                f"installed ({open_real_source('bundled:debian').install})")
        else:
            configs.append(("private", f"dir:{private}", ["bundled:pypi"], "validator real=dir: of a STAND-IN "
                            "private pool (copies of the Debian photos); the attacker holds every other public "
                            "photo (bundled:pypi) but not these"))
        for name, real, held, about in configs:
            t0 = time.perf_counter()
            index = PublicIndex([open_real_source(s) for s in held], size)
            log(f"[{name}] {about}\n[{name}] attacker index: {len(index)} photos built in "
                f"{time.perf_counter() - t0:.1f} s; {n} challenges, fake={fake}, levels {levels}")
            sampler = ChallengeSampler(real=real, fake=fake, size=size, level_probs=levels, seed=seed)
            try:
                res = evaluate(index, sampler, n, seed, rotations)
            finally:
                sampler.close()
            results["configs"][name] = {"real": "dir:<stand-in private pool>" if name == "private" else real,
                                        "attacker_holds": held, "attacker_photos": len(index), "about": about, **res}
    return results


def print_table(results: dict) -> None:
    print(f"\nlookup attack: {results['n']} challenges per configuration, {results['size']}px, levels "
          f"{results['levels']}, fake={results['fake']}. A coin flip (p=0.5) counts as half right.")
    print(f"{'config':<9} {'accuracy':>8} {'matched':>8} {'real acc':>8} {'fake acc':>8}  chance 99%   "
          f"accuracy by level (matched share)")
    for name, cfg in results["configs"].items():
        s = cfg["summary"]
        levels = "  ".join(f"L{lv}: {v['accuracy']:.2f} ({v['matched']:.2f})" for lv, v in s["by_level"].items())
        print(f"{name:<9} {s['accuracy']:>8.3f} {s['matched']:>8.3f} {s['by_class']['real']['accuracy'] or 0:>8.3f} "
              f"{s['by_class']['fake']['accuracy'] or 0:>8.3f}  [{s['chance_99'][0]:.2f}, {s['chance_99'][1]:.2f}]  "
              f"{levels}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="challenges per configuration (default 100)")
    ap.add_argument("--size", type=int, default=256, help="challenge side, a multiple of 16 (default 256)")
    ap.add_argument("--levels", default="0:.25,1:.45,2:.15,3:.15", help="augmentation level mix (default: validator)")
    ap.add_argument("--fake", default="procedural", help="fake source or family mix (default procedural)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results (with every challenge) here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = run(args.n, args.size, args.levels, args.fake, args.seed)
    print_table(results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
