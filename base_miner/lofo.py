"""Leave-one-family-out (LOFO): how well does a detector trained without a generator family catch that family?

    python -m base_miner.lofo --families offline --arch npr,npr_raw --out runs/lofo \\
        --train 3000 --val 300 --test-per-family 150 --epochs 2 [--minutes 30] --seed 0 [--only realcugan,...]

For every left-out family F (every pretrained and house family of the mix by default; procedural ones with
--include-procedural, or exactly the --only list) and every --arch, the driver runs the project's own commands, each
printed first and appended to OUT/commands.sh, so every number can be reproduced by hand:

    bitmind-lite data build --out OUT/data/shared-test ...    once: test/<every family>/ and test/real_holdout/
    bitmind-lite data build --out OUT/data/without-F --exclude-family F --test-per-family 0 ...
    python base_miner/train.py --dataroot OUT/data/without-F --checkpoints_dir OUT/runs/F --name ARCH ...
    python base_miner/test.py --model_path OUT/runs/F/ARCH/model_epoch_best.pth --dataroot OUT/data/shared-test/test \\
        --classes F,real_holdout --jpeg 75,90 --json OUT/results/F__ARCH.json ...

All builds share the seed and the photo split (--holdout-real / --val-photos are passed explicitly), so the test
photos are never in any training set (checked from the manifests), and the test images of F are the same for every
left-out run. The best checkpoint is picked on val/, which holds the training families only.
Results: OUT/lofo.json (every cell, every metric, the commands) and OUT/lofo.md (rows: left-out family x arch; Acc,
AP, AUC, MCC, Brier, reward on F; the share of unseen real photos called real; Acc on F after JPEG re-encoding).
Resumable: a (family, arch) cell with a result for the same settings is skipped, datasets resume or are reused by
the builder, and an interrupted training continues from its last state (train.py --resume).

Reusing built datasets (no builds: pretrained generators cost about a second per image on a CPU):

    python -m base_miner.lofo --dataset DATA [--test-dataset HOUSE] --arch npr,npr_raw --out runs/lofo --minutes 4

leaves F out of DATA's train/ and val/ with train.py --classes (and every semisynthetic family whose inner
generator is of F's kind, since its regions may come from F); F's test images come from whichever dataset's test/
holds them. Families in a --test-dataset that DATA never trains on share one run per arch, trained on all of DATA
(runs/all-of-DATA): they are left out by construction. Both datasets must cut the same test photos (checked).

`--arch bts` trains with base_miner/train_bts.py --stage cls (its re-synthesizer never sees a fake, so only the
classifier must not see F): `--train-args "--init weights/bts.pth --fresh_cls --max_steps 500"`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from base_miner.lofo_report import cell_summary, markdown
from bitmind_lite.data.layout import HOLDOUT_CLASS as HOLDOUT
from bitmind_lite.data.layout import MANIFEST, read_manifest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KINDS = ("pretrained", "house")


@dataclass(frozen=True)
class Trainer:
    """How one detector is trained: its script, where its best checkpoint, resumable state and history land, and how
    its history says how long it trained (train.py: one record per epoch; train_bts.py: cumulative records)."""
    script: str
    options: tuple[str, ...]  # "{arch}" is the detector's name
    epochs_flag: str
    best: str
    state: str
    history: str
    length: Callable[[list], tuple[float, float]]  # history records -> (epochs, training seconds)


TRAIN_PY = Trainer("base_miner/train.py", ("--arch", "{arch}"), "--niter", "model_epoch_best.pth", "train_state.pt",
                   "history.json", lambda h: (len(h), sum(r["seconds"] for r in h)))
# BTS: its re-synthesizer sees real photos only, so leaving a family out is a classifier stage without it (give the
# re-synthesizer with --train-args "--init weights/bts.pth --fresh_cls")
TRAINERS = {"bts": Trainer("base_miner/train_bts.py", ("--stage", "cls"), "--epochs", "cls_best.pth", "cls_state.pt",
                           "cls_history.json", lambda h: (h[-1]["epoch"], h[-1]["seconds"]))}


def trainer_for(arch: str) -> Trainer:
    return TRAINERS.get(arch, TRAIN_PY)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m base_miner.lofo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="offline", help="the family mix to build from (bitmind-lite data families)")
    p.add_argument("--arch", default="npr,npr_raw", help="comma-separated detectors to train")
    p.add_argument("--out", required=True, help="folder for datasets, runs, results and the table")
    p.add_argument("--only", default="", help="leave out exactly these families (comma-separated)")
    p.add_argument("--include-procedural", action="store_true", help="also leave out each procedural family")
    p.add_argument("--train", type=int, default=2000, help="training pairs per dataset (bitmind-lite data build)")
    p.add_argument("--val", type=int, default=200, help="validation pairs per dataset")
    p.add_argument("--test-per-family", type=int, default=100, help="test pairs per family, and unseen reals")
    p.add_argument("--size", type=int, default=256, help="image side of the datasets")
    p.add_argument("--holdout-real", type=int, default=None, help="test photos (default: the builder's ~15%%)")
    p.add_argument("--val-photos", type=int, default=None, help="validation photos (default: the builder's ~10%%)")
    p.add_argument("--real", action="append", help="real photo source(s) (default bundled)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per training run")
    p.add_argument("--minutes", type=float, default=None, help="training time per run (with or instead of --epochs)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--crop_size", type=int, default=224, help="training crop")
    p.add_argument("--input_size", type=int, default=256, help="validation/test input size (the serving size)")
    p.add_argument("--jpeg", default="75,90", help="also test after JPEG re-encoding at these qualities")
    p.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=None, help="train.py --workers")
    p.add_argument("--build-workers", type=int, default=None, help="bitmind-lite data build --workers")
    p.add_argument("--train-args", default="", help="more train.py options, e.g. '--cache_decoded --init weights/{arch}.pth' ({arch}: "
                   "each --arch)")
    p.add_argument("--dataset", default=None, help="reuse this built dataset (leave families out with --classes)")
    p.add_argument("--test-dataset", action="append", default=[],
                   help="with --dataset: another built dataset whose test/ families are left out by construction")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


def left_out_families(args) -> list[str]:
    """The families to leave out, in registry order; a clear error when there is none or one is unknown."""
    from bitmind_lite.data.families import all_families, parse_mix
    from bitmind_lite.data.photo import SourceError

    mix = list(parse_mix(args.families))
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    if only:
        unknown = [f for f in only if f not in mix]
        if unknown:
            raise SourceError(f"--only {', '.join(unknown)}: not in the mix {args.families!r} ({', '.join(mix)})")
        return only
    kinds = DEFAULT_KINDS + (("procedural",) if args.include_procedural else ())
    fams = all_families()
    chosen = [f for f in mix if fams[f].kind in kinds]
    if not chosen:
        raise SourceError(f"the mix {args.families!r} has no {' or '.join(kinds)} family available here "
                          f"({', '.join(mix)}); use --include-procedural or --only")
    return chosen


def photo_split(args) -> tuple[int, int]:
    """(test photos, val photos), explicit so every build cuts the same split; defaults as the builder's."""
    if args.holdout_real is not None and args.val_photos is not None:
        return args.holdout_real, args.val_photos
    from bitmind_lite.data.real import open_real_source

    n = sum(len(open_real_source(spec).ids()) for spec in args.real or ["bundled"])
    return (args.holdout_real if args.holdout_real is not None else max(1, round(0.15 * n)),
            args.val_photos if args.val_photos is not None else max(1, round(0.10 * n)))


class Runner:
    """Prints, logs (OUT/commands.sh) and runs commands from the repository root."""

    def __init__(self, out: Path, dry_run: bool):
        self.out, self.dry_run = out, dry_run

    def build(self, cmd: list[str], out: Path) -> int:
        """A dataset build, skipped when this very command already finished it (its manifest is there): the builder
        would only verify it, which costs a process start and opening every generator."""
        stamp = out.with_name(out.name + ".command")
        if not self.dry_run and (out / MANIFEST).is_file() and stamp.is_file() and \
                stamp.read_text() == shlex.join(cmd):
            print(f"\n{out}: built before by the same command, reused", flush=True)
            return 0
        rc = self(cmd)
        if rc == 0 and not self.dry_run:
            stamp.write_text(shlex.join(cmd))
        return rc

    def __call__(self, cmd: list[str]) -> int:
        line = shlex.join(cmd)
        print(f"\n$ {line}", flush=True)
        if self.dry_run:
            return 0
        with open(self.out / "commands.sh", "a") as f:
            f.write(f"(cd {shlex.quote(str(ROOT))} && {line})\n")
        return subprocess.run(cmd, cwd=ROOT).returncode


def bitmind_lite() -> list[str]:
    script = Path(sys.executable).with_name("bitmind-lite")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bitmind_lite.cli"]


def build_command(args, out: Path, split: tuple[int, int], exclude: str | None) -> list[str]:
    cmd = bitmind_lite() + ["data", "build", "--out", str(out), "--families", args.families, "--seed", str(args.seed),
                            "--size", str(args.size), "--holdout-real", str(split[0]), "--val-photos", str(split[1]),
                            "--quiet"]
    for spec in args.real or []:
        cmd += ["--real", spec]
    if args.build_workers is not None:
        cmd += ["--workers", str(args.build_workers)]
    if exclude is None:  # the shared test set
        return cmd + ["--train", "0", "--val", "0", "--test-per-family", str(args.test_per_family)]
    return cmd + ["--exclude-family", exclude, "--train", str(args.train), "--val", str(args.val),
                  "--test-per-family", "0"]


def train_command(args, data: Path, runs: Path, arch: str, classes: list[str] | None = None) -> list[str]:
    trainer = trainer_for(arch)
    cmd = [sys.executable, trainer.script, *(o.replace("{arch}", arch) for o in trainer.options), "--dataroot",
           str(data), "--checkpoints_dir", str(runs), "--name", arch, "--seed", str(args.seed), "--batch_size",
           str(args.batch_size), "--crop_size", str(args.crop_size), "--eval_size", str(args.input_size), "--device",
           args.device]
    if args.epochs is not None or trainer is TRAIN_PY:  # train.py with --minutes alone: as many epochs as fit
        cmd += [trainer.epochs_flag, str(args.epochs if args.epochs is not None else 1000)]
    if args.minutes is not None:
        cmd += ["--max_minutes", str(args.minutes)]
    if args.workers is not None and trainer is TRAIN_PY:  # train_bts.py loads in-process
        cmd += ["--workers", str(args.workers)]
    if classes:
        cmd += ["--classes", ",".join(classes)]
    cmd += shlex.split(args.train_args.replace("{arch}", arch))  # e.g. --init weights/{arch}.pth
    return cmd + (["--resume"] if (runs / arch / trainer.state).is_file() else [])


def test_command(args, ckpt: Path, arch: str, test_root: Path, family: str, result: Path) -> list[str]:
    return [sys.executable, "base_miner/test.py", "--model_path", str(ckpt), "--arch", arch, "--dataroot",
            str(test_root), "--classes", f"{family},{HOLDOUT}", "--jpeg", args.jpeg, "--input_size",
            str(args.input_size), "--batch_size", str(args.batch_size), "--device", args.device, "--quiet",
            "--json", str(result), "--plot", str(result.with_suffix(".png"))]


def check_disjoint_photos(test_build: Path, data: Path) -> None:
    """No test photo in the training or validation set (both builds cut the same photo split)."""
    test = set(read_manifest(test_build)["photos"]["test"])
    photos = read_manifest(data)["photos"]
    shared = test & (set(photos["train"]) | set(photos["val"]))
    if shared:
        raise RuntimeError(f"{data} trains on test photos {sorted(shared)[:3]}...: the photo splits differ")


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def build_plan(args, out: Path, sh: Runner, split: tuple[int, int]) -> list[dict]:
    """One cell per left-out family: its own build without F, tested on a shared test build."""
    test_build = out / "data" / "shared-test"
    if sh.build(build_command(args, test_build, split, None), test_build):
        raise RuntimeError("building the test set failed (see above); fix it and run again")
    return [{"family": f, "data": out / "data" / f"without-{f}", "classes": None, "runs": out / "runs" / f,
             "test_build": test_build, "build": build_command(args, out / "data" / f"without-{f}", split, f)}
            for f in left_out_families(args)]


def dataset_plan(args, out: Path) -> list[dict]:
    """One cell per left-out family over built datasets: F (and the semisynthetic families that may hold F's
    regions) dropped from DATA's classes; families DATA never trains on share one run on all of DATA."""
    from bitmind_lite.data.families import all_families
    from bitmind_lite.data.photo import SourceError
    from bitmind_lite.data.semisynthetic import INNER_KIND

    data = Path(args.dataset).resolve()
    train = read_manifest(data)["classes"]["train"]
    tests: dict[str, Path] = {}
    for d in [data] + [Path(t).resolve() for t in args.test_dataset]:
        for f in read_manifest(d)["classes"].get("test", []):
            if f != HOLDOUT:
                tests.setdefault(f, d)
    fams = all_families()
    only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = [f for f in only if f not in tests]
    if unknown:
        raise SourceError(f"--only {', '.join(unknown)}: no test/ folder for it in {args.dataset} or "
                          f"--test-dataset ({', '.join(tests)})")
    kinds = DEFAULT_KINDS + (("procedural",) if args.include_procedural else ())
    chosen = only or [f for f in tests if f in fams and fams[f].kind in kinds]
    if not chosen:
        raise SourceError(f"no {' or '.join(kinds)} family has test images in {args.dataset} or --test-dataset; "
                          "use --include-procedural or --only")
    cells = []
    for f in chosen:
        if f in train:
            kind = fams[f].kind if f in fams else None
            drop = {f} | {semi for semi, inner in INNER_KIND.items() if inner == kind}
            classes, runs = [c for c in train if c not in drop], out / "runs" / f
        else:
            classes, runs = None, out / "runs" / f"all-of-{data.name}"
        cells.append({"family": f, "data": data, "classes": classes, "runs": runs, "test_build": tests[f],
                      "build": None})
    return cells


def run(args) -> int:
    from base_miner.test import parse_qualities

    if args.epochs is None and args.minutes is None:
        raise ValueError("give --epochs and/or --minutes")
    if args.test_dataset and not args.dataset:
        raise ValueError("--test-dataset needs --dataset")
    qualities = [str(q) for q in parse_qualities(args.jpeg)]
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)
    config = {k: getattr(args, k) for k in ("families", "train", "val", "test_per_family", "size", "real", "epochs",
                                            "minutes", "batch_size", "crop_size", "input_size", "jpeg", "seed",
                                            "train_args")}
    sh = Runner(out, args.dry_run)
    if args.dataset:
        plan = dataset_plan(args, out)
        manifest = read_manifest(Path(args.dataset))
        config.update(dataset=str(Path(args.dataset).resolve()), test_datasets=[str(Path(t).resolve())
                      for t in args.test_dataset], families=manifest["config"].get("families") or "procedural",
                      train=manifest["config"].get("train"), val=manifest["config"].get("val"), size=manifest["size"],
                      test_per_family=manifest["config"].get("test_per_family"))
    else:
        split = photo_split(args)
        config["photo_split"] = list(split)
        plan = build_plan(args, out, sh, split)
    families = [c["family"] for c in plan]
    print(f"LOFO over {families} x {archs} -> {out}", flush=True)
    cells, failed, built, trained = [], [], {}, set()
    for spec in plan:
        family, data, runs = spec["family"], spec["data"], spec["runs"]
        test_root = spec["test_build"] / "test"
        for arch in archs:
            result = out / "results" / f"{family}__{arch}.json"
            cell_path = result.with_suffix(".cell.json")
            if cell_path.is_file() and json.loads(cell_path.read_text()).get("config") == config:
                cells.append(json.loads(cell_path.read_text())["cell"])
                print(f"\n{family} x {arch}: done before ({cell_path.name}), skipped", flush=True)
                continue
            if data not in built:
                built[data] = spec["build"] is None or sh.build(spec["build"], data) == 0
                if built[data] and not args.dry_run:
                    check_disjoint_photos(spec["test_build"], data)
            ckpt = runs / arch / trainer_for(arch).best
            train = train_command(args, data, runs, arch, spec["classes"])
            steps = [train, test_command(args, ckpt, arch, test_root, family, result)]
            todo = steps[1:] if (runs, arch) in trained else steps  # a run shared by several left-out families
            if not built[data] or any(sh(cmd) for cmd in todo):
                failed.append(f"{family} x {arch}")
                continue
            trained.add((runs, arch))
            if args.dry_run:
                continue
            trainer = trainer_for(arch)
            length = trainer.length(json.loads((runs / arch / trainer.history).read_text())["history"])
            cell = cell_summary(family, arch, json.loads(result.read_text()), *length)
            cell["commands"] = [shlex.join(c) for c in steps]
            cell["train_classes"] = spec["classes"]
            write_json(cell_path, {"config": config, "cell": cell})
            cells.append(cell)
    if not args.dry_run:
        write_json(out / "lofo.json", {"config": config, "left_out": families, "archs": archs, "cells": cells,
                                       "failed": failed})
        table = markdown(cells, qualities, config)
        (out / "lofo.md").write_text(table)
        print(f"\n{table}\nwrote {out / 'lofo.json'} and {out / 'lofo.md'}", flush=True)
    if failed:
        print(f"lofo: failed cells (run again to retry): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--train", args.train), ("--val", args.val), ("--test-per-family", args.test_per_family),
                        ("--batch_size", args.batch_size), ("--crop_size", args.crop_size)):
        if value < 1:
            parser.error(f"{flag} must be >= 1")
    if (args.epochs is not None and args.epochs < 1) or (args.minutes is not None and not args.minutes > 0):
        parser.error("--epochs must be >= 1 and --minutes > 0")
    from bitmind_lite.data.photo import SourceError

    try:
        return run(args)
    except (SourceError, ValueError, RuntimeError, OSError) as e:
        print(f"lofo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
