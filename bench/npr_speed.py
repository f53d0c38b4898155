"""NPR inference speed per runtime, input size and batch size, plus each runtime's accuracy delta against eager.

    python bench/npr_speed.py                       # all runtimes, 224/256, batch 1/8/32 -> bench/results/npr_speed.json
    python bench/npr_speed.py --runtimes eager,onnx --batches 1 --seconds 1

Throughput is images/s of `detector.predict` on preprocessed batches (decode/preprocess excluded), the median of
`--rounds` interleaved rounds, each the median over at least `--seconds` of calls, after a warm-up pass (compile
and ONNX export happen at detector creation and are reported as build time, not in the throughput).
Accuracy: every runtime scores the same validation images (`--val`, default the built `datasets/npr-procedural/val`,
else a generated toy set); the delta is in accuracy points against eager at the same size. The runtime to serve is
the fastest at 224/batch 1 whose |delta| <= 0.5 pt at every size. `onnx_int8` needs the checkpoint's cached int8
model for each size; the bench makes missing ones in a temporary copy (calibrated on the val set's sibling train/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as `python bench/npr_speed.py` from a checkout

from base_miner.data import EvalDataset, loader, split_samples  # noqa: E402
from base_miner.metrics import binary_metrics  # noqa: E402
from base_miner.toydata import make_toy_dataset  # noqa: E402
from bitmind_lite.detectors import create_detector  # noqa: E402
from bitmind_lite.detectors.base import calibration_path  # noqa: E402
from bitmind_lite.detectors.registry import default_weights  # noqa: E402
from bitmind_lite.detectors.runtimes import RUNTIMES, load_int8  # noqa: E402

MAX_ACC_DELTA_PT = 0.5


def cpu_info() -> dict:
    flags, model = set(), platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags, "avx2": "avx2" in flags,
            "torch": torch.__version__, "onnxruntime": _ort_version(), "cuda": torch.cuda.is_available()}


def _ort_version() -> str | None:
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return None


def time_calls(fn, seconds: float, min_reps: int = 3) -> float:
    """Median seconds per call over at least `seconds` and `min_reps` calls."""
    times, start = [], time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def score(det, samples, batch_size: int = 16) -> np.ndarray:
    probs = [det.predict(x) for x, _ in loader(EvalDataset(samples, det.preprocess), batch_size)]
    return torch.cat(probs).numpy()


def choose(speed_rows: list[dict], acc_rows: list[dict], size: int = 224, batch: int = 1) -> str | None:
    ok = {r["runtime"] for r in acc_rows} - {r["runtime"] for r in acc_rows if abs(r["delta_pt"]) > MAX_ACC_DELTA_PT}
    candidates = [r for r in speed_rows if r["size"] == size and r["batch"] == batch and r["runtime"] in ok]
    return max(candidates, key=lambda r: r["img_s"])["runtime"] if candidates else None


def int8_weights(weights: Path, size: int, calib_dir: Path, tmp: Path) -> Path:
    """The checkpoint itself when its cached int8 model fits `size`, else a copy in `tmp` quantised for `size`."""
    try:
        load_int8(weights, size)
        return weights
    except ValueError:
        pass
    from base_miner.quantize import main as quantize

    copy = tmp / f"{weights.stem}-{size}{weights.suffix}"
    copy.write_bytes(weights.read_bytes())
    if calibration_path(weights).is_file():  # same bytes, same fingerprint: the calibration stays valid
        calibration_path(copy).write_bytes(calibration_path(weights).read_bytes())
    quantize(["--model_path", str(copy), "--dataroot", str(calib_dir), "--input_size", str(size)])
    return copy


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="npr")
    p.add_argument("--weights", default=None, help="checkpoint (default: bundled weights/<arch>.pth)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    p.add_argument("--sizes", default="224,256")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--seconds", type=float, default=2.0, help="timing per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--val", default=None, help="folder of 0_real/1_fake images for the accuracy delta")
    p.add_argument("--val-limit", type=int, default=400, help="at most this many validation images")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "npr_speed.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runtimes = ["eager"] + [r for r in args.runtimes.split(",") if r and r != "eager"]  # eager: the reference
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        p.error(f"unknown runtime(s) {unknown}; choose from {list(RUNTIMES)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]

    val = Path(args.val) if args.val else ROOT / "datasets" / "npr-procedural" / "val"
    weights = Path(args.weights) if args.weights else default_weights(args.arch)
    tmp = tempfile.TemporaryDirectory()
    dets, build_s, errors = {}, {}, {}
    for rt in runtimes:
        for size in sizes:
            w = weights
            if rt == "onnx_int8" and weights is not None:
                w = int8_weights(weights, size, val.parent / "train" if (val.parent / "train").is_dir() else val,
                                 Path(tmp.name))
            t0 = time.perf_counter()
            try:
                dets[rt, size] = create_detector(args.arch, w, args.device, runtime=rt, input_size=size)
            except Exception as e:  # report a runtime that cannot run here (e.g. no onnxruntime) and go on
                errors[rt] = f"{type(e).__name__}: {e}"
                print(f"{rt}: unavailable: {errors[rt]}", file=sys.stderr)
                break
            build_s[rt, size] = time.perf_counter() - t0
    inputs = {(s, b): torch.randn(b, 3, s, s) for s in sizes for b in batches}
    for (rt, size), det in dets.items():  # warm-up: compile recompiles per batch size, ORT allocates arenas
        for b in batches:
            det.predict(inputs[size, b])

    per_round: dict[tuple, list[float]] = {}
    for r in range(args.rounds):
        for (rt, size), det in dets.items():
            for b in batches:
                x = inputs[size, b]
                per_round.setdefault((rt, size, b), []).append(time_calls(lambda: det.predict(x), args.seconds))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    speed_rows = []
    for (rt, size, b), secs in per_round.items():
        s = statistics.median(secs)
        speed_rows.append({"runtime": rt, "size": size, "batch": b, "img_s": round(b / s, 2),
                           "ms_per_batch": round(1000 * s, 2), "build_s": round(build_s[rt, size], 2),
                           "rounds_img_s": [round(b / x, 2) for x in secs]})

    with tempfile.TemporaryDirectory() as toy:
        if val.is_dir():
            samples, val_source = split_samples(val.parent, val.name), str(val)
        else:
            samples, val_source = split_samples(make_toy_dataset(toy, 32, 256, splits=("val",)), "val"), "toy"
        rng = np.random.default_rng(0)
        if len(samples) > args.val_limit:
            samples = [samples[i] for i in sorted(rng.choice(len(samples), args.val_limit, replace=False))]
        labels = np.array([y for _, y in samples])
        acc_rows, reference = [], {}
        for (rt, size), det in dets.items():  # eager comes first for each size: it is the reference
            probs = score(det, samples)
            ref = reference.setdefault(size, probs)
            m, m_ref = binary_metrics(labels, probs), binary_metrics(labels, ref)
            acc_rows.append({"runtime": rt, "size": size, "acc": m["acc"], "ap": m["ap"],
                             "delta_pt": round(100 * (m["acc"] - m_ref["acc"]), 3),
                             "max_abs_dp": float(np.abs(probs - ref).max())})

    best = choose(speed_rows, acc_rows)
    print(f"\n{args.arch} on {cpu_info()['cpu']} ({torch.get_num_threads()} threads), images/s (decode excluded)")
    print(f"{'runtime':<14}{'size':>5}" + "".join(f"{'b' + str(b):>9}" for b in batches) + f"{'build s':>9}")
    for rt in runtimes:
        for size in sizes:
            rows = {r["batch"]: r for r in speed_rows if r["runtime"] == rt and r["size"] == size}
            if rows:
                print(f"{rt:<14}{size:>5}" + "".join(f"{rows[b]['img_s']:>9.1f}" for b in batches)
                      + f"{rows[batches[0]]['build_s']:>9.1f}")
    print(f"\naccuracy on {len(samples)} validation images ({val_source}), delta vs eager in points")
    print(f"{'runtime':<14}{'size':>5}{'acc':>8}{'AP':>8}{'delta':>8}{'max|dp|':>10}")
    for r in acc_rows:
        ap = f"{100 * r['ap']:8.2f}" if r["ap"] is not None else f"{'-':>8}"
        print(f"{r['runtime']:<14}{r['size']:>5}{100 * r['acc']:8.2f}{ap}{r['delta_pt']:8.2f}{r['max_abs_dp']:10.2e}")
    print(f"\nfastest at 224/batch 1 within {MAX_ACC_DELTA_PT} pt of eager: {best}")
    out = {"arch": args.arch, "weights": str(dets[next(iter(dets))].weights_path) if dets else None,
           "machine": cpu_info(), "speed": speed_rows, "accuracy": acc_rows, "val": val_source,
           "val_images": len(samples), "unavailable": errors, "recommended_runtime": best}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
