"""Images per second for each real source and every available generator family at 256x256 on CPU (target: <= 50
ms per procedural fake), plus a whole challenge (sample_challenge), a builder pair, and the validator's challenge
cache (fill rate, and the latency of a challenge taken from it: goal p95 <= 5 ms).

    .venv/bin/python bench/data_speed.py [--size 256] [--n 40] [--threads 1] [--json bench/results/data_speed.json]

Families are those `bitmind-lite data families` lists as available; slow ones get fewer repetitions (--budget-s).
Real sources: `bundled`, `dir:` (the bundled files copied to a temp folder, decoded from disk each time: no cache)
and `hf:` (a save_to_disk copy of them; skipped without `datasets`). Fakes: `make()` = render a 256 window of a
photo + the source-JPEG re-encode; `render` = the torch part alone. Timings are medians of per-image times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bitmind_lite.data import ChallengeSampler, open_fake_source, open_real_source  # noqa: E402
from bitmind_lite.data.builder import BuildConfig, Builder  # noqa: E402
from bitmind_lite.data.photo import pil_to_tensor, random_window  # noqa: E402
from bitmind_lite.data.families import all_families  # noqa: E402
from bitmind_lite.data.procedural import FAMILIES, render, sample_params  # noqa: E402


def timed(fn, n: int, budget_s: float | None = None) -> dict:
    t0 = time.perf_counter()
    fn()  # warm-up (also loads models)
    if budget_s:  # slow generators: as many repetitions as fit in the budget, at least 3
        first = time.perf_counter() - t0
        n = max(3, min(n, int(budget_s / max(first, 1e-3))))
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"ms_median": round(med * 1e3, 2), "ms_p90": round(sorted(times)[int(0.9 * (n - 1))] * 1e3, 2),
            "ms_p95": round(sorted(times)[int(0.95 * (n - 1))] * 1e3, 3), "images_per_s": round(1.0 / med, 1), "n": n}


def real_sources(tmp: Path) -> dict[str, str]:
    """bundled, plus dir: and hf: copies of the same photos (so the three are comparable)."""
    bundled = open_real_source("bundled")
    folder = tmp / "photos"
    folder.mkdir()
    for pid, path in bundled.paths.items():
        shutil.copy(path, folder / (pid.replace("/", "_") + path.suffix))
    specs = {"bundled": "bundled", "dir": f"dir:{folder}"}
    try:
        import datasets

        files = sorted(str(p) for p in folder.iterdir())
        ds = datasets.Dataset.from_dict({"image": files}).cast_column("image", datasets.Image())
        ds.save_to_disk(str(tmp / "hf"))
        specs["hf"] = f"hf:{tmp / 'hf'}"
    except ImportError:
        print("datasets not installed: skipping the hf source", file=sys.stderr)
    return specs


def uncached(src, rng, size):
    """sample() with the photo cache emptied first: every call decodes its file (the cost a big pool pays)."""
    src._cache.clear()
    return src.sample(rng, size)


def cache_rows(size: int, n: int, fill_s: float) -> list[dict]:
    """The validator's challenge cache: filled by its background process from the offline mix for `fill_s`
    seconds (fill rate), then `take()` latency: what a validator round waits for a challenge."""
    from bitmind_lite.data.cache import CachedSampler, SamplerSpec

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sampler = CachedSampler(tmp, SamplerSpec(size=size, fake="offline", device="cpu"), max_items=10_000,
                                log_level="WARNING")
        try:
            deadline = time.monotonic() + 300  # the filler imports torch and opens the mix first (slow under load)
            while sampler.cache.stats()["items"] == 0 and time.monotonic() < deadline:
                time.sleep(0.5)
            start, t0 = sampler.cache.stats()["items"], time.perf_counter()
            time.sleep(fill_s)
            filled = sampler.cache.stats()["items"] - start
            rate = filled / (time.perf_counter() - t0)
            rows.append({"kind": "cache", "name": "fill (offline mix)", "what": f"{filled} challenges in {fill_s:g} s",
                         "ms_median": round(1e3 / rate, 1) if rate else None, "ms_p90": None, "ms_p95": None,
                         "images_per_s": round(rate, 2), "n": filled})
            sampler.filler.stop()  # measure takes alone, as a round sees them between fills
            takes = sampler.cache.stats()["items"] - 1  # hits only: the warm-up take is one more
            if takes < 3:
                print(f"cache: only {takes + 1} challenges pooled; take latency not measured", file=sys.stderr)
                return rows
            rng = np.random.default_rng(1)
            rows.append({"kind": "cache", "name": "take (round latency)", "what": "PNG bytes + label + meta",
                         **timed(lambda: sampler.sample_encoded(rng), takes)})
        finally:
            sampler.close()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=40, help="timed repetitions per row")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = what the builder's workers use)")
    ap.add_argument("--budget-s", type=float, default=20.0, help="seconds per slow (network) family row")
    ap.add_argument("--fill-s", type=float, default=30.0, help="seconds the cache filler runs for the fill-rate row")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "data_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    size, n = args.size, args.n
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in real_sources(Path(tmp)).items():
            src = open_real_source(spec)
            rows.append({"kind": "real", "name": name, "what": "crop from cache",
                         **timed(lambda: src.sample(rng, size), n)})
            rows.append({"kind": "real", "name": name, "what": "decode + crop",
                         **timed(lambda: uncached(src, rng, size), n)})
    bundled = open_real_source("bundled")
    photos = [bundled.photo(pid) for pid in bundled.ids()]
    for fam in all_families().values():
        if fam.status() is not None:
            print(f"skipping {fam.name} ({fam.kind}): {fam.status()}", file=sys.stderr)
            continue
        fake = open_fake_source(fam.name)

        def make():
            photo = photos[int(rng.integers(len(photos)))]
            _, box = random_window(photo, rng, size)
            fake.make(photo, box, rng, family=fam.name)

        rows.append({"kind": fam.kind, "name": fam.name, "what": "make (generate + source JPEG)",
                     **timed(make, n, budget_s=None if fam.kind == "procedural" else args.budget_s)})
        fake.close()
        if fam.kind == "procedural":
            x = pil_to_tensor(random_window(photos[0], rng, size)[0])
            p = sample_params(rng, fam.name)
            rows.append({"kind": "procedural", "name": fam.name, "what": "render only",
                         **timed(lambda: render(x, fam.name, p["decoder_seed"], p["eps"], p["kernel_noise"],
                                                p["hidden"], tuple(p["grid_offset"])), n)})
    sampler = ChallengeSampler(size=size, fake="procedural")
    rows.append({"kind": "pipeline", "name": "sample_challenge", "what": "50/50 real/fake + augmentation",
                 **timed(lambda: sampler.sample(rng), n)})
    builder = Builder(BuildConfig(out=tempfile.mkdtemp(), train=n + 1, val=0, test_per_family=0, size=size))
    items = iter(builder.items() * 2)
    rows.append({"kind": "pipeline", "name": "builder pair", "what": "real+fake+augment (no PNG write)",
                 **timed(lambda: builder.make(next(items)), n)})

    rows.extend(cache_rows(size, n, args.fill_s))

    print(f"{'kind':<13} {'name':<22} {'what':<34} {'ms (median)':>11} {'ms (p95)':>9} {'img/s':>7}")
    for r in rows:
        print(f"{r['kind']:<13} {r['name']:<22} {r['what']:<34} {str(r['ms_median']):>11} {str(r['ms_p95']):>9} "
              f"{r['images_per_s']:>7}")
    worst = max(r["ms_median"] for r in rows if r["kind"] == "procedural" and r["what"].startswith("make"))
    print(f"slowest procedural fake: {worst} ms median (target <= 50 ms)")
    take = next((r for r in rows if r["name"].startswith("take")), None)
    if take:
        print(f"challenge from the cache: p95 {take['ms_p95']} ms (goal <= 5 ms)")
    result = {"bench": "data_speed", "size": size, "n": n, "torch_threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
              "slowest_procedural_ms": worst, "target_ms": 50, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
