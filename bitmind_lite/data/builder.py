"""Build an NPR training set in the dataset layout (bitmind_lite/data/layout.py, the CNNDetection one): train/ and
val/ hold one class folder per generator family, test/ every family (excluded ones included, for
leave-one-family-out testing) plus test/real_holdout (reals from photos never used in train/val).

Every item is a PAIR cut from the same photo window: the real crop and its fake twin (procedural: a re-render of
that window; diffusers: an image prompted from it) get the same flip and the same augmentation parameters, and
the fake gets the photo's JPEG history (photo.reencode_like). Source photos are split once (seeded) into
train / val / test and never shared across splits. Each item has its own RNG stream derived from
(seed, split, class, index), so the output is deterministic, items can be built in any order or in parallel,
and an interrupted build resumes where it stopped (finished items are kept, images are written atomically).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from bitmind_lite import __version__
from bitmind_lite.data.augment import (DEFAULT_LEVEL_PROBS, LEVELS, apply, parse_level_probs, sample_level, sample_params,
                                       window_side)
from bitmind_lite.data.photo import SourceError, content_box, ensure_min_size
from bitmind_lite.data.sources import open_fake_source, open_real_source, route_options

from bitmind_lite.data.layout import (DESCRIPTION, FAKE_DIR, FORMAT, HOLDOUT_CLASS, MANIFEST, REAL_DIR,  # noqa: F401
                                      RECORDS_DESCRIPTION, RECORDS_DIR, SPLITS, pair_paths)
from bitmind_lite.data.layout import records_path as layout_records_path


@dataclass
class BuildConfig:
    out: str
    train: int = 2000  # real+fake PAIRS in train, spread evenly over the train classes (2*train images)
    val: int = 200
    test_per_family: int = 100  # pairs per family folder in test (and reals in test/real_holdout)
    real: list[str] = field(default_factory=lambda: ["bundled"])
    fake: list[str] = field(default_factory=lambda: ["procedural"])
    families: str | None = None  # a weighted family mix (families.py), e.g. "offline" or "realcugan=2,procedural"
    seed: int = 0
    size: int = 256
    exclude_families: list[str] = field(default_factory=list)
    holdout_real: int | None = None  # photos kept for test only (default ~15% of the pool)
    val_photos: int | None = None  # photos kept for val only (default ~10%)
    level_probs: dict = field(default_factory=lambda: dict(DEFAULT_LEVEL_PROBS))
    strength: float = 1.0  # procedural difficulty: < 1 = fainter generator traces
    fake_options: dict = field(default_factory=dict)  # extra options for diffusers sources (device, steps, ...)

    def key(self) -> dict:
        """What decides the content (everything but the output path)."""
        d = asdict(self)
        d.pop("out")
        d["level_probs"] = {str(k): round(v, 6) for k, v in parse_level_probs(self.level_probs).items()}
        return d


@dataclass(frozen=True)
class Item:
    split: str
    cls: str  # class folder: a family, or HOLDOUT_CLASS
    index: int


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


class Builder:
    def __init__(self, cfg: BuildConfig):
        if cfg.size < 32 or cfg.size % 2:
            raise ValueError(f"--size must be an even number >= 32, got {cfg.size}")
        if min(cfg.train, cfg.val, cfg.test_per_family) < 0:
            raise ValueError("--train, --val and --test-per-family must be >= 0")
        self.cfg, self.out = cfg, Path(cfg.out)
        self.level_probs = parse_level_probs(cfg.level_probs)
        self.reals = [open_real_source(s) for s in cfg.real]
        self.fakes = [open_fake_source(s, **_source_options(s, cfg)) for s in cfg.fake]
        self.class_weights: dict[str, float] = {}
        if cfg.families:
            from bitmind_lite.data.families import FamilyMix

            mix = FamilyMix.from_spec(cfg.families, **route_options(_source_options(cfg.families, cfg)))
            self.fakes.append(mix)
            self.class_weights = dict(zip(mix.families, mix.weights.tolist()))
        self.family_source = {}
        for f in self.fakes:
            for fam in f.families:
                if fam in self.family_source:
                    raise SourceError(f"family {fam!r} comes from two fake sources; list each once")
                self.family_source[fam] = f
        unknown = [f for f in cfg.exclude_families if f not in self.family_source]
        if unknown:
            raise SourceError(f"--exclude-family {unknown}: not among the families {list(self.family_source)}")
        all_classes = list(self.family_source)
        train_classes = [c for c in all_classes if c not in cfg.exclude_families]
        if not train_classes and (cfg.train or cfg.val):
            raise SourceError("every family is excluded: nothing left for train/val")
        self.classes = {"train": train_classes if cfg.train else [], "val": train_classes if cfg.val else [],
                        "test": all_classes + [HOLDOUT_CLASS] if cfg.test_per_family else []}
        self.photos = self._partition()
        self.side = window_side(cfg.size)

    # ------------------------------------------------------------ planning

    def _partition(self) -> dict[str, list[tuple[int, str]]]:
        """Seeded split of every (source, photo id) into disjoint train / val / test pools."""
        cfg = self.cfg
        pool = [(s, pid) for s, src in enumerate(self.reals) for pid in src.ids()]
        n = len(pool)
        default = lambda share, wanted: max(1, round(share * n)) if wanted else 0  # noqa: E731
        n_test = cfg.holdout_real if cfg.holdout_real is not None else default(0.15, cfg.test_per_family)
        n_val = cfg.val_photos if cfg.val_photos is not None else default(0.10, cfg.val)
        if n_test < 0 or n_val < 0 or n_test + n_val >= n:
            raise SourceError(f"the real pool has {n} photos: cannot hold out {n_test} for test and {n_val} for val "
                              "and keep any for train")
        if cfg.test_per_family and not n_test:
            raise SourceError("--test-per-family needs held-out photos (--holdout-real >= 1)")
        if cfg.val and not n_val:
            raise SourceError("--val needs validation photos (--val-photos >= 1)")
        perm = np.random.default_rng([cfg.seed, 7777]).permutation(n)
        picked = [pool[i] for i in perm]
        return {"test": picked[:n_test], "val": picked[n_test:n_test + n_val], "train": picked[n_test + n_val:]}

    def _counts(self, split: str) -> dict[str, int]:
        classes = self.classes[split]
        if split == "test":
            return {c: self.cfg.test_per_family for c in classes}
        total = self.cfg.train if split == "train" else self.cfg.val
        if not classes:
            return {}
        # families of a weighted mix get their weight's share; the rest (per-source specs) weigh 1 / n each
        w = np.array([self.class_weights.get(c, 1.0 / len(classes)) for c in classes], dtype=float)
        w /= w.sum()
        counts = np.floor(w * total).astype(int)
        for i in np.argsort(-(w * total - counts), kind="stable")[: total - int(counts.sum())]:
            counts[i] += 1  # largest remainders: the total is exact and equal weights give the old even spread
        return {c: int(n) for c, n in zip(classes, counts)}

    def items(self) -> list[Item]:
        return [Item(split, c, i) for split in SPLITS for c, n in self._counts(split).items() for i in range(n)]

    # ------------------------------------------------------------ one item

    def _photo_for(self, item: Item):
        """Photos are cycled per class (offset by a class hash), so every photo of the split is used evenly."""
        pool = self.photos[item.split]
        start = item.index + _stable(item.cls)
        for k in range(len(pool)):
            s, pid = pool[(start + k) % len(pool)]
            photo = self.reals[s].photo(pid)
            if photo is not None:
                return self.reals[s], photo
        raise SourceError(f"{item.split}: none of its {len(pool)} photos is readable")

    def make(self, item: Item) -> tuple[Image.Image, Image.Image | None, dict]:
        rng = np.random.default_rng([self.cfg.seed, SPLITS.index(item.split), _stable(item.cls), item.index])
        real, photo = self._photo_for(item)
        canvas = ensure_min_size(photo.image, self.side)
        box = content_box(rng, canvas, self.side)
        real_img, fake_img, gen = canvas.crop(box), None, None
        if item.cls != HOLDOUT_CLASS:
            fake_img, gen = self.family_source[item.cls].make(photo, box, rng, family=item.cls)
        hflip = bool(rng.random() < 0.5)  # flips keep the 2x2 grid (even width): same for both images
        aug = sample_params(rng, sample_level(rng, self.level_probs), real_img.size, self.cfg.size)
        out = []
        for img in (real_img, fake_img):
            if img is not None:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if hflip else img
                img = apply(img, aug)
            out.append(img)
        record = {"split": item.split, "class": item.cls, "index": item.index, "real_source": real.spec,
                  "photo": photo.id, "window": list(box), "hflip": hflip, "augmentation": aug, "generator": gen}
        return out[0], out[1], record

    # ------------------------------------------------------------ files

    def paths(self, item: Item) -> tuple[Path, Path | None]:
        return pair_paths(self.out, item.split, item.cls, item.index)

    def records_path(self, split: str, cls: str) -> Path:
        return layout_records_path(self.out, split, cls)

    def done_records(self) -> dict[Item, dict]:
        """Items finished by an earlier run: a readable record line, both image files present, and the photo in the
        item's split pool. The last check matters when the real pool changed between runs (photos added to
        `bundled`): the same seed then cuts a different split, and a stale item could put a test photo in train."""
        pools = {split: {(self.reals[s].spec, pid) for s, pid in pool} for split, pool in self.photos.items()}
        done = {}
        for path in sorted((self.out / RECORDS_DIR).glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    r = json.loads(line)
                    item = Item(r["split"], r["class"], int(r["index"]))
                    photo = (r["real_source"], r["photo"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interruption: that item is simply rebuilt
                if item.split in pools and photo in pools[item.split] and \
                        all(p is None or p.exists() for p in self.paths(item)):
                    done[item] = r
        return done

    def save(self, item: Item) -> dict:
        """Make one item and write its images atomically (temp file + rename); returns its record."""
        real_img, fake_img, record = self.make(item)
        for path, img in zip(self.paths(item), (real_img, fake_img)):
            if path is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            img.save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, path)
        return record

    def append_record(self, record: dict) -> None:
        rp = self.records_path(record["split"], record["class"])
        rp.parent.mkdir(parents=True, exist_ok=True)
        with open(rp, "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------ manifest

    def manifest(self, records: dict[Item, dict]) -> dict:
        used: dict[str, set] = {s: set() for s in SPLITS}
        for r in records.values():
            used[r["split"]].add((r["real_source"], r["photo"]))
        licences = {}
        for src in self.reals:
            ids = sorted({pid for s in SPLITS for spec, pid in used[s] if spec == src.spec})
            licences[src.spec] = src.licences(ids)
        counts = {}
        for item in records:
            for label, p in zip((REAL_DIR, FAKE_DIR), self.paths(item)):
                if p is not None:
                    key = f"{item.split}/{item.cls}/{label}"
                    counts[key] = counts.get(key, 0) + 1
        return {
            "format": FORMAT, "bitmind_lite_version": __version__, "seed": self.cfg.seed, "size": self.cfg.size,
            "config": self.cfg.key(),
            "layout": DESCRIPTION,
            "classes": self.classes, "excluded_families": list(self.cfg.exclude_families),
            "real_sources": [r.describe() for r in self.reals], "fake_sources": [f.describe() for f in self.fakes],
            "photos": {s: sorted(f"{spec}:{pid}" for spec, pid in used[s]) for s in SPLITS},
            "photo_pools": {s: len(self.photos[s]) for s in SPLITS},
            "licences": licences,
            "augmentation": {"level_probs": {str(k): v for k, v in self.level_probs.items()},
                             "levels": {str(k): v for k, v in LEVELS.items()}, "window_side": self.side},
            "counts": dict(sorted(counts.items())),
            "records": RECORDS_DESCRIPTION,
        }

    def close(self) -> None:
        for f in self.fakes:
            f.close()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


# Worker processes: each opens its own sources and runs torch single-threaded (on a small CPU, 2 threads per
# process fighting other processes was 4-8x slower than one thread per process in measurements here).
_worker: Builder | None = None


def _init_worker(cfg: BuildConfig) -> None:
    global _worker
    import torch

    torch.set_num_threads(1)
    _worker = Builder(cfg)


def _work(item: Item) -> dict:
    return _worker.save(item)


def _source_options(spec: str, cfg: BuildConfig) -> dict:
    if spec.startswith("procedural"):
        return {"strength": cfg.strength}
    if spec.startswith("diffusers:"):
        return dict(cfg.fake_options)
    return {"strength": cfg.strength, **cfg.fake_options}


def _uses_pipeline(source) -> bool:
    if source.kind == "mix":
        return any(s.kind in ("online", "diffusers") for s in source.members())
    return source.kind in ("online", "diffusers")


def _run(builder: Builder, todo: list[Item], workers: int) -> Iterator[dict]:
    if workers <= 1 or len(todo) < 2 * workers:
        for item in todo:
            yield builder.save(item)
        return
    ctx = multiprocessing.get_context("spawn")  # fork after torch/loguru threads exist is unsafe
    # an executor, not a Pool: a worker killed from outside (OOM killer) raises BrokenProcessPool here instead of
    # hanging the build for ever; what was written so far is kept and the same command resumes
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(builder.cfg,)) as pool:
        try:
            yield from pool.map(_work, todo, chunksize=4)
        except BrokenProcessPool as e:
            raise RuntimeError(f"a builder worker died ({e}); run the same command again to resume") from None


def build_dataset(cfg: BuildConfig, progress: bool = True, overwrite: bool = False, workers: int = 1) -> dict:
    """Build (or finish, or verify) the dataset described by `cfg`; returns the manifest.

    `workers` > 1 builds items in that many processes (the output is identical: every item has its own RNG).
    Diffusers sources always build in this process (one pipeline, one GPU).
    """
    out = Path(cfg.out)
    state = out / "build.json"
    if out.exists() and any(out.iterdir()):
        if not state.exists():
            raise FileExistsError(f"{out} exists and is not a bitmind-lite dataset; choose an empty or new --out")
        previous = json.loads(state.read_text())
        if previous != cfg.key():
            if not overwrite:
                raise FileExistsError(f"{out} holds a dataset built with other settings; use --overwrite or another --out")
            for name in (*SPLITS, RECORDS_DIR, MANIFEST):
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    builder = Builder(cfg)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(state, cfg.key())
    if any(_uses_pipeline(f) for f in builder.fakes):
        workers = 1  # diffusers pipelines hold GBs (and the GPU): one process
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: conv results (and so PNG bytes) then match for any --workers
    try:
        done = builder.done_records()
        todo = [it for it in builder.items() if it not in done]
        if todo:
            (out / MANIFEST).unlink(missing_ok=True)  # incomplete from here until the end
        from tqdm import tqdm

        with tqdm(total=len(done) + len(todo), initial=len(done), disable=not progress, unit="pair",
                  desc="data build") as bar:
            for record in _run(builder, todo, workers):
                builder.append_record(record)
                done[Item(record["split"], record["class"], record["index"])] = record
                bar.update(1)
        wanted = set(builder.items())
        records = {it: r for it, r in done.items() if it in wanted}
        for split in SPLITS:  # rewrite records sorted (workers and resumed runs append out of order)
            for cls in builder.classes[split]:
                lines = [json.dumps(records[it]) for it in sorted(records, key=lambda i: i.index)
                         if it.split == split and it.cls == cls]
                rp = builder.records_path(split, cls)
                rp.parent.mkdir(parents=True, exist_ok=True)
                tmp = rp.with_name(f".{rp.name}.tmp")
                tmp.write_text("".join(line + "\n" for line in lines))
                os.replace(tmp, rp)
        manifest = json.loads(json.dumps(builder.manifest(records)))  # exactly what the file holds
        _write_json(out / MANIFEST, manifest)
        return manifest
    finally:
        torch.set_num_threads(threads)
        builder.close()
