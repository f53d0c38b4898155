"""`bitmind-lite data build|sample|sources`: build an NPR training set, dump challenge samples, list photo sources."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bitmind_lite.log import setup_logging

EPILOG = """examples:
  bitmind-lite data build --out datasets/procedural --train 4000 --val 400 --test-per-family 200 --seed 0
  bitmind-lite data build --out datasets/lofo-bicubic --exclude-family bicubic --holdout-real 8
  bitmind-lite data build --out datasets/mixed --real bundled --real dir:/photos \
      --fake procedural --fake diffusers:/models/sd
  bitmind-lite data sample --out /tmp/challenges -n 24
  bitmind-lite data build --out datasets/zoo --families offline --holdout-real 12
  bitmind-lite data families
  bitmind-lite data sources
"""


def _build(args) -> int:
    from bitmind_lite.data.augment import parse_level_probs
    from bitmind_lite.data.builder import BuildConfig, build_dataset

    fake_options = {}
    if args.device:
        fake_options["device"] = args.device
    if args.steps:
        fake_options["steps"] = args.steps
    if args.no_caption:
        fake_options["caption_model"] = None
    cfg = BuildConfig(out=args.out, train=args.train, val=args.val, test_per_family=args.test_per_family,
                      real=args.real or ["bundled"], fake=args.fake or ([] if args.families else ["procedural"]),
                      families=args.families, seed=args.seed, size=args.size,
                      exclude_families=args.exclude_family or [], holdout_real=args.holdout_real,
                      val_photos=args.val_photos, level_probs=parse_level_probs(args.levels), strength=args.strength,
                      fake_options=fake_options)
    manifest = build_dataset(cfg, progress=not args.quiet, overwrite=args.overwrite, workers=args.workers)
    counts = manifest["counts"]
    print(f"wrote {sum(counts.values())} images to {args.out} (manifest.json: seed {manifest['seed']}, "
          f"train classes {manifest['classes']['train']}, photos train/val/test "
          f"{manifest['photo_pools']['train']}/{manifest['photo_pools']['val']}/{manifest['photo_pools']['test']})")
    return 0


def _sample(args) -> int:
    from bitmind_lite.data.challenge import ChallengeSampler

    fake = (args.fake or []) + ([args.families] if args.families else []) or "offline"
    sampler = ChallengeSampler(real=args.real or "bundled", fake=fake, fake_prob=args.fake_prob,
                               size=args.size, level_probs=args.levels)
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "meta.jsonl", "w") as f:
        for i in range(args.n):
            img, label, meta = sampler.sample(rng)
            name = f"{i:04d}_{'fake' if label else 'real'}_{meta['family']}_L{meta['augmentation']['level']}.png"
            img.save(out / name)
            f.write(json.dumps({"file": name, **meta}) + "\n")
    sampler.close()
    print(f"wrote {args.n} challenges to {out}")
    return 0


def _sources(args) -> int:
    from bitmind_lite.data.real import bundled_manifest, locate_bundled

    rows = [(e["id"], e["requirement"], "ok" if locate_bundled(e) else "MISSING", e["licence"])
            for e in bundled_manifest()["photos"]]
    if args.json:
        print(json.dumps([dict(zip(("id", "package", "status", "licence"), r)) for r in rows], indent=1))
    else:
        for r in rows:
            print(f"{r[0]:<26} {r[1]:<22} {r[2]:<8} {r[3]}")
    available = sum(r[2] == "ok" for r in rows)
    print(f"bundled: {available}/{len(rows)} photos available", file=sys.stderr)
    if available < len(rows):
        print(f"install the missing ones with: {bundled_manifest()['install']}", file=sys.stderr)
    return 0 if available else 1


def _families(args) -> int:
    from bitmind_lite.data.families import all_families

    rows = [f.as_dict() for f in all_families().values()]
    if args.kind:
        rows = [r for r in rows if r["kind"] == args.kind]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'family':<24} {'kind':<14} {'status':<12} source")
        for r in rows:
            status = "available" if r["status"] == "available" else "unavailable"
            print(f"{r['name']:<24} {r['kind']:<14} {status:<12} {r['source']}")
            if status != "available":
                print(f"{'':<24} {'':<14} {'':<12} -> {r['status'].removeprefix('unavailable: ')}")
    n = sum(r["status"] == "available" for r in rows)
    print(f"{n}/{len(rows)} families available; mix them with --families (e.g. offline, pretrained=2,nearest)",
          file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", action="append", help="real source spec: bundled | dir:PATH | hf:DATASET[:SPLIT] (repeatable)")
    p.add_argument("--fake", action="append",
                   help="fake source spec: procedural[:FAM,...] | diffusers:MODEL_ID_OR_DIR (repeatable)")
    p.add_argument("--families", default=None,
                   help="weighted generator family mix: offline | KIND[=W],FAMILY[=W],... "
                        "(see `bitmind-lite data families`; sample defaults to offline)")
    p.add_argument("--size", type=int, default=256, help="output side in pixels (even; default 256)")
    p.add_argument("--levels", default="0:.25,1:.45,2:.15,3:.15",
                   help="augmentation level probabilities LEVEL:P,... (default: the validator's 0:.25,1:.45,2:.15,3:.15)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--log-level", default="WARNING")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitmind-lite data", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="write an NPR training set (CNNDetection layout + manifest.json)")
    b.add_argument("--out", required=True, help="output folder (re-running with the same settings resumes/verifies)")
    b.add_argument("--train", type=int, default=2000, help="real+fake pairs in train, spread over the train classes (default 2000)")
    b.add_argument("--val", type=int, default=200, help="real+fake pairs in val (default 200)")
    b.add_argument("--test-per-family", type=int, default=100,
                   help="pairs per family in test/<family>/, and reals in test/real_holdout/0_real (default 100)")
    b.add_argument("--exclude-family", action="append", help="leave this family out of train/val (still in test)")
    b.add_argument("--holdout-real", type=int, default=None,
                   help="photos held out of train/val, used only by test (default ~15%% of the pool)")
    b.add_argument("--val-photos", type=int, default=None, help="photos used only by val (default ~10%% of the pool)")
    b.add_argument("--strength", type=float, default=1.0, help="procedural trace strength (default 1; < 1 = harder fakes)")
    b.add_argument("--device", default=None, help="device for diffusers sources (auto|cpu|cuda)")
    b.add_argument("--steps", type=int, default=None, help="diffusion steps for diffusers sources")
    b.add_argument("--no-caption", action="store_true", help="diffusers: template prompts, no captioning model")
    b.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes building items (default 2; the output is identical for any number)")
    b.add_argument("--overwrite", action="store_true", help="replace a dataset built with other settings in --out")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(b)

    s = sub.add_parser("sample", help="write N challenge images + meta.jsonl, as a validator would draw them")
    s.add_argument("--out", required=True)
    s.add_argument("-n", type=int, default=16)
    s.add_argument("--fake-prob", type=float, default=0.5)
    _common(s)

    src = sub.add_parser("sources", help="list the bundled photo pool, its licences and any missing package")
    src.add_argument("--json", action="store_true")
    src.add_argument("--log-level", default="WARNING")

    fam = sub.add_parser("families", help="list the generator families: kind, source, available or why not")
    fam.add_argument("--kind", default=None, help="only this kind (procedural|pretrained|house|semisynthetic|online)")
    fam.add_argument("--json", action="store_true")
    fam.add_argument("--log-level", default="WARNING")

    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    from bitmind_lite.data.photo import SourceError

    try:
        return {"build": _build, "sample": _sample, "sources": _sources, "families": _families}[args.cmd](args)
    except (SourceError, ValueError, FileExistsError, OSError, RuntimeError) as e:
        print(f"bitmind-lite data {args.cmd}: {e}", file=sys.stderr)
        return 2
