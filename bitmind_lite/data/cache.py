"""A bounded on-disk pool of ready challenges, kept full by a generator process, so that a validator round never
waits for a generator (some families cost 0.1-2 s per image on CPU; taking a ready challenge costs ~1 ms).

    sampler = CachedSampler(dir, SamplerSpec(real="bundled", fake="offline"))   # starts the filler process
    image, label, meta = sampler.sample(rng)                                     # the ChallengeSampler interface
    png, label, meta = sampler.sample_encoded(rng)                               # the bytes as sent: no re-encode

This module is the pool (ChallengeCache) and the validator's side of it (SamplerSpec, CachedSampler); the filler
process and its supervisor live in cache_filler.py, which imports this module (never the reverse at import time).

Files in `dir`:
    <id>.chal         b"BMC1", 4-byte big-endian length, meta JSON, then the PNG exactly as protocol.encode_image
                      makes it (before base64), so serving needs no re-encoding
    manifest.json     {"gen": G, "entries": [{id, bytes, label, uses, created}, ...]} oldest first
    served-<G>.log    one line per round served since the manifest was written: "<id>" (or "!<id>": unreadable)
    lock              fcntl.flock'ed around every read-modify-write below (the kernel drops it when a holder dies)

The manifest is written tmp + fsync + os.replace (always a whole old or a whole new version), only by add() and
reconcile(). take() never rewrites it: it appends one line to served-<G>.log (microseconds, where a manifest
rewrite costs milliseconds of fsync), and the next add() folds that log into the manifest as generation G+1,
dropping spent entries. Entry files are fsynced as .tmp-* first and renamed into place under the lock just
before the manifest lists them; files are unlinked only after the manifest stops listing them. So `kill -9` of
either process at any point leaves at worst stray files, which reconcile() (run on every open) removes with any
entry whose file is missing or short. A served line reaches the page cache before the round uses the challenge,
so a killed validator never serves it again; only a power loss can forget one (the log is not fsynced).
"""
from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import secrets
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger
from PIL import Image

MAGIC = b"BMC1"
HEADER = len(MAGIC) + 4
SUFFIX, TMP_PREFIX, MANIFEST, LOCK = ".chal", ".tmp-", "manifest.json", "lock"
ENTRY_KEYS = {"id", "bytes", "label", "uses", "created"}


class CacheError(RuntimeError):
    """An entry could not be added (too large for the cache, or its tmp file was removed by a reconcile)."""


def encode_png(image: Image.Image) -> bytes:
    """The PNG bytes the validator sends for `image` (protocol.encode_image, before base64)."""
    from bitmind_lite.protocol import encode_image

    return base64.b64decode(encode_image(image))


@dataclass
class CachedChallenge:
    id: str
    png: bytes
    label: int
    meta: dict
    uses: int  # rounds served this entry, this one included
    created: float

    def image(self) -> Image.Image:
        img = Image.open(io.BytesIO(self.png))
        img.load()
        return img.convert("RGB")


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class ChallengeCache:
    """At most `max_items` entries and `max_bytes` bytes of entry files, oldest evicted first. Each entry is served
    to at most `max_uses` rounds, then evicted. Default 1: a challenge seen twice lets a miner (or miners sharing
    notes) answer from memory instead of from the pixels; reuse would buy generator time with the score's meaning.
    `tag` names what made the entries (the sampler spec): entries made under another tag are dropped on open."""

    def __init__(self, root: str | Path, max_items: int = 256, max_bytes: int = 256 << 20, max_uses: int = 1,
                 tag: str = ""):
        if min(max_items, max_bytes, max_uses) < 1:
            raise ValueError(f"cache caps must be >= 1, got max_items={max_items} max_bytes={max_bytes} "
                             f"max_uses={max_uses}")
        self.root = Path(root).expanduser()
        self.max_items, self.max_bytes, self.max_uses, self.tag = int(max_items), int(max_bytes), int(max_uses), tag
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / LOCK, "a+b")  # noqa: SIM115 - held for the object's life
        self._thread_lock = threading.Lock()  # flock does not exclude two threads sharing one open file
        self.take_seconds: deque[float] = deque(maxlen=4096)
        self.reconcile()

    # ---- on-disk state ----
    @contextmanager
    def _locked(self):
        with self._thread_lock:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def _path(self, entry_id: str) -> Path:
        return self.root / f"{entry_id}{SUFFIX}"

    def _log(self, gen: int) -> Path:
        return self.root / f"served-{gen}.log"

    def _read(self) -> tuple[list[dict], int, str | None]:
        """(entries oldest first, generation, tag); a missing or unreadable manifest reads as empty."""
        try:
            doc = json.loads((self.root / MANIFEST).read_bytes())
            return [e for e in doc["entries"] if ENTRY_KEYS <= set(e)], int(doc["gen"]), doc.get("tag")
        except FileNotFoundError:
            return [], 0, self.tag
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning(f"challenge cache {self.root}: unreadable manifest ({e}); starting it empty")
            return [], 0, self.tag

    def _served(self, gen: int) -> tuple[Counter, set]:
        """(uses per id, ids found unreadable) recorded in generation `gen`'s log."""
        try:
            lines = self._log(gen).read_text().split()
        except FileNotFoundError:
            return Counter(), set()
        return Counter(x for x in lines if not x.startswith("!")), {x[1:] for x in lines if x.startswith("!")}

    def _live(self, entries: list[dict], gen: int) -> list[dict]:
        """Entries that may still be served, their uses brought up to date."""
        uses, bad = self._served(gen)
        return [{**e, "uses": e["uses"] + uses[e["id"]]} for e in entries
                if e["id"] not in bad and e["uses"] + uses[e["id"]] < self.max_uses]

    def _commit(self, entries: list[dict], old: list[dict], gen: int) -> None:
        """Write `entries` (after evicting past the caps) as generation gen+1, then delete what it no longer lists:
        the old log and the files of spent or evicted entries. A kill in between leaves strays for reconcile()."""
        total = sum(e["bytes"] for e in entries)
        while entries and (len(entries) > self.max_items or total > self.max_bytes):
            total -= entries.pop(0)["bytes"]
        tmp = self.root / f"{TMP_PREFIX}{secrets.token_hex(6)}.json"
        _fsync_write(tmp, json.dumps({"version": 1, "gen": gen + 1, "tag": self.tag, "entries": entries}).encode())
        os.replace(tmp, self.root / MANIFEST)
        self._log(gen).unlink(missing_ok=True)
        keep = {e["id"] for e in entries}
        for e in old:
            if e["id"] not in keep:
                self._path(e["id"]).unlink(missing_ok=True)

    # ---- recovery ----
    def reconcile(self) -> dict:
        """Make manifest, log and files agree (see the module docstring); returns counts of what was removed."""
        removed = {"tmp": 0, "orphans": 0, "spent": 0, "broken": 0}
        with self._locked():
            entries, gen, tag = self._read()
            if tag != self.tag:
                logger.info(f"challenge cache {self.root}: made by another sampler spec; emptying it")
                entries = []
            live, kept, seen = self._live(entries, gen), [], set()
            for e in live:
                try:
                    ok = e["id"] not in seen and self._path(e["id"]).stat().st_size == e["bytes"] >= HEADER
                except (OSError, KeyError, TypeError):
                    ok = False
                if ok:
                    kept.append(e)
                    seen.add(e["id"])
            removed["spent"], removed["broken"] = len(entries) - len(live), len(live) - len(kept)
            self._commit(kept, entries, gen)
            listed = {e["id"] for e in kept}
            for p in self.root.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    removed["tmp"] += 1
                elif (p.suffix == SUFFIX and p.stem not in listed) or (p.name.startswith("served-")
                                                                       and p != self._log(gen + 1)):
                    removed["orphans"] += 1
                else:
                    continue
                p.unlink(missing_ok=True)
        if any(removed.values()):
            logger.info(f"challenge cache {self.root}: reconciled, removed {removed}; {len(kept)} entries kept")
        return removed

    # ---- the pool ----
    def add(self, png: bytes, label: int, meta: dict) -> str:
        """Store one challenge (only the filler calls this); returns its id."""
        header = json.dumps(meta).encode()
        data = MAGIC + len(header).to_bytes(4, "big") + header + png
        if len(data) > self.max_bytes:
            raise CacheError(f"a {len(data)}-byte challenge does not fit a {self.max_bytes}-byte cache")
        entry_id = secrets.token_hex(8)
        tmp = self.root / f"{TMP_PREFIX}{entry_id}"
        _fsync_write(tmp, data)  # the slow part, outside the lock
        with self._locked():
            try:
                os.replace(tmp, self._path(entry_id))
            except FileNotFoundError:  # a reconcile in another process removed it: harmless, just lost work
                raise CacheError("the entry's tmp file was removed by a concurrent reconcile") from None
            entries, gen, _ = self._read()
            live = self._live(entries, gen) + [{"id": entry_id, "bytes": len(data), "label": int(label), "uses": 0,
                                                "created": time.time()}]
            self._commit(live, entries, gen)
        return entry_id

    def take(self, rng: np.random.Generator) -> CachedChallenge | None:
        """A random servable entry, recorded as served; None when there is none. Holds the lock for a manifest
        read and one log append (a generator never holds it), so it cannot wait for a generator."""
        start = time.perf_counter()
        try:
            with self._locked():
                entries, gen, _ = self._read()
                live = self._live(entries, gen)
                if not live:
                    return None
                with open(self._log(gen), "a") as log:
                    while live:
                        e = live.pop(int(rng.integers(len(live))))
                        try:
                            data = self._path(e["id"]).read_bytes()
                            n = int.from_bytes(data[len(MAGIC):HEADER], "big")
                            if not data.startswith(MAGIC) or len(data) != e["bytes"] or HEADER + n > len(data):
                                raise ValueError("short or foreign file")
                            meta = json.loads(data[HEADER:HEADER + n])
                        except (OSError, ValueError) as err:  # only when someone else touched the files
                            logger.warning(f"challenge cache {self.root}: skipping entry {e['id']}: {err}")
                            log.write(f"!{e['id']}\n")
                            continue
                        log.write(f"{e['id']}\n")
                        return CachedChallenge(e["id"], data[HEADER + n:], int(e["label"]), meta, e["uses"] + 1,
                                               float(e["created"]))
                return None
        finally:
            self.take_seconds.append(time.perf_counter() - start)

    def take_latency_ms(self) -> dict:
        """n, p50, p95 and max of the recent take() calls, in milliseconds."""
        ms = np.asarray(self.take_seconds) * 1e3
        if not len(ms):
            return {"n": 0, "p50": None, "p95": None, "max": None}
        return {"n": len(ms), "p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                "max": float(ms.max())}

    def stats(self) -> dict:
        entries, gen, _ = self._read()  # no lock: the manifest is only ever replaced whole
        live = self._live(entries, gen)
        return {"items": len(live), "bytes": sum(e["bytes"] for e in live), "max_items": self.max_items,
                "max_bytes": self.max_bytes, "max_uses": self.max_uses}

    def has_room(self) -> bool:
        """Room for one more entry of the average size, without evicting a servable one."""
        s = self.stats()
        mean = s["bytes"] / s["items"] if s["items"] else 0
        return s["items"] < self.max_items and s["bytes"] + mean <= self.max_bytes

    def close(self) -> None:
        self._lock_file.close()


@dataclass(frozen=True)
class SamplerSpec:
    """Everything a filler process needs to build its own ChallengeSampler (picklable: crosses a spawn).

    `seed` seeds the fallback sampler only: the filler always draws fresh entropy, because a seeded filler would
    regenerate, after every restart, the very challenges it already served."""

    real: str = "bundled"
    fake: str = "procedural"
    fake_prob: float = 0.5
    size: int = 256
    level_probs: dict | str | None = None
    seed: int | None = None
    device: str | None = "auto"  # for generator networks; procedural sources take none
    fake_options: dict = field(default_factory=dict)

    def build(self, seed: int | None = None):
        from bitmind_lite.data.challenge import ChallengeSampler

        options = {**({"device": self.device} if self.device else {}), **self.fake_options}
        return ChallengeSampler(real=self.real, fake=self.fake, fake_prob=self.fake_prob, size=self.size,
                                level_probs=self.level_probs, seed=self.seed if seed is None else seed,
                                fake_options=options)

    def tag(self) -> str:
        """What decides the distribution of the challenges (not seed or device)."""
        d = asdict(self)
        return json.dumps({k: d[k] for k in ("real", "fake", "fake_prob", "size", "level_probs", "fake_options")},
                          sort_keys=True, default=str)


class CachedSampler:
    """The ChallengeSampler interface (`sample(rng) -> (image, label, meta)`, describe, close) over a
    ChallengeCache that a filler process keeps full. An empty pool falls back to sampling here, with a warning."""

    def __init__(self, root: str | Path, spec: SamplerSpec, max_items: int = 256, max_bytes: int = 256 << 20,
                 max_uses: int = 1, filler: bool = True, startup_timeout: float = 60.0, log_level: str = "INFO",
                 logging_dir: str | None = None):
        self.spec = spec
        self.cache = ChallengeCache(root, max_items, max_bytes, max_uses, tag=spec.tag())
        self.rng = np.random.default_rng(spec.seed)
        self.hits = self.misses = 0
        self._fallback = None
        self._fallback_lock = threading.Lock()
        self.filler = None
        if filler:
            from bitmind_lite.data.cache_filler import CacheFiller  # the seam: that module imports this one

            self.filler = CacheFiller(self.cache.root, spec, max_items, max_bytes, max_uses, log_level, logging_dir)
            started = time.monotonic()
            self.filler.start(startup_timeout)  # raises SourceError for a spec the filler cannot build
            while not self.cache.stats()["items"] and time.monotonic() - started < startup_timeout:
                time.sleep(0.02)  # the first round should not have to build a second sampler here

    def sample(self, rng: np.random.Generator | None = None) -> tuple[Image.Image, int, dict]:
        return self._serve(rng, encoded=False)

    def sample_encoded(self, rng: np.random.Generator | None = None) -> tuple[bytes, int, dict]:
        """(PNG bytes ready to send, label, meta): the cheapest way to serve (no decode, no re-encode)."""
        return self._serve(rng, encoded=True)

    def _serve(self, rng: np.random.Generator | None, encoded: bool):
        rng = self.rng if rng is None else rng
        entry = self.cache.take(rng)
        if entry is not None:
            self.hits += 1
            meta = {**entry.meta, "cache": {"hit": True, "id": entry.id, "uses": entry.uses,
                                            "age_s": round(time.time() - entry.created, 3)}}
            return (entry.png if encoded else entry.image()), entry.label, meta
        self.misses += 1
        running = self.filler is not None and self.filler.alive()
        logger.warning(f"challenge cache {self.cache.root} is empty (filler {'running' if running else 'not running'}"
                       "); sampling this challenge synchronously")
        image, label, meta = self._fallback_sampler().sample(rng)
        return (encode_png(image) if encoded else image), label, {**meta, "cache": {"hit": False}}

    def _fallback_sampler(self):
        with self._fallback_lock:  # built on first need only: it holds a second copy of the generators
            if self._fallback is None:
                self._fallback = self.spec.build()
            return self._fallback

    def pool_stats(self) -> dict:
        """Pool size and caps, rounds served from it (hits) or sampled here (misses), recent take() latency."""
        return {**self.cache.stats(), "dir": str(self.cache.root), "hits": self.hits, "misses": self.misses,
                "take_ms": self.cache.take_latency_ms()}

    def describe(self) -> dict:
        return {**asdict(self.spec), "cache": self.pool_stats()}

    def close(self) -> None:
        if self.filler is not None:
            self.filler.stop()
        if self._fallback is not None:
            self._fallback.close()
        self.cache.close()
