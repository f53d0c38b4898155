"""Evaluate a checkpoint the way the NPR paper does: per generator Acc at 0.5, AP, real Acc, fake Acc, then the
unweighted mean over generators.

    python base_miner/test.py --model_path weights/npr.pth --dataroot DATA/test --batch_size 32 \\
        [--arch npr] [--json OUT.json] [--plot OUT.png]

DATA/test holds one folder per generator, each with 0_real/1_fake (sub-categories are concatenated), or is itself
such a folder. A generator folder with real images only (e.g. held-out photos) has no AP; its real Acc is reported.
Images go through the detector's own preprocessing (no resize: center crop or tile to --input_size), and the scores
are what a miner serves: the checkpoint's sidecar calibration is applied when present (--no_calib for raw).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # `python base_miner/test.py` and `cd base_miner && python test.py` (the seed README)
    sys.path[0] = str(ROOT)  # the repo root replaces base_miner/, whose test.py shadows the stdlib `test`

import numpy as np  # noqa: E402
import torch  # noqa: E402

from base_miner.data import EvalDataset, collect_samples, group_folders, loader  # noqa: E402
from base_miner.metrics import binary_metrics, format_table, mean_row  # noqa: E402
from bitmind_lite.detectors import create_detector, list_detectors  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="checkpoint (default: the bundled weights/<arch>.pth)")
    p.add_argument("--dataroot", default=None,
                   help="folder of generator folders with 0_real/1_fake (default: datasets/npr-procedural/test)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--arch", default="npr", help="registered detector the checkpoint belongs to")
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", default="eager", help="inference runtime (eager, channels_last, onnx, ...)")
    p.add_argument("--input_size", type=int, default=256, help="crop/tile size (no resize)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no_calib", action="store_true", help="ignore the checkpoint's .calib.json (raw sigmoid)")
    p.add_argument("--json", default=None, help="write the table (and per-image scores) here")
    p.add_argument("--plot", default=None, help="write per-generator ROC and precision-recall curves here (PNG)")
    return p


def score_samples(detector, samples, batch_size: int, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ys, ps = [], []
    for x, y in loader(EvalDataset(samples, detector.preprocess), batch_size, workers):
        ps.append(detector.predict(x))
        ys.append(y)
    return torch.cat(ys).numpy().astype(int), torch.cat(ps).numpy()


def evaluate_folders(detector, dataroot, batch_size: int = 32, workers: int = 0) -> dict:
    """{"rows": {generator: metrics}, "mean": metrics, "scores": {generator: {"y": [...], "p": [...]}}}."""
    rows, scores = {}, {}
    for name, folder in group_folders(dataroot).items():
        y, p = score_samples(detector, collect_samples(folder), batch_size, workers)
        rows[name] = binary_metrics(y, p)
        scores[name] = {"y": y.tolist(), "p": [round(float(v), 6) for v in p]}
    return {"rows": rows, "mean": mean_row(rows), "scores": scores}


def plot_curves(scores: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, s in scores.items():
        y, p = np.array(s["y"]), np.array(s["p"])
        if len(set(y)) < 2:
            continue  # one class only: no curve (e.g. held-out real photos)
        fpr, tpr, _ = roc_curve(y, p)
        prec, rec, _ = precision_recall_curve(y, p)
        roc.plot(fpr, tpr, label=name)
        pr.plot(rec, prec, label=name)
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        parser.error("--batch_size must be >= 1 and --workers >= 0")
    if args.input_size < 2 or args.input_size % 2:
        parser.error("--input_size must be even")
    if args.arch not in list_detectors():
        parser.error(f"unknown --arch {args.arch!r}; registered: {', '.join(list_detectors())}")
    dataroot = args.dataroot or str(ROOT / "datasets" / "npr-procedural" / "test")
    try:
        detector = create_detector(args.arch, weights=args.model_path, device=args.device, runtime=args.runtime,
                                   input_size=args.input_size, calibrate=not args.no_calib)
        if getattr(detector, "weights_path", None) is None:
            raise FileNotFoundError(f"no --model_path given and no bundled weights for {args.arch}")
        result = evaluate_folders(detector, dataroot, args.batch_size, args.workers)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 2
    cal = detector.calibration
    print(f"{args.arch} {detector.weights_path} ({detector.version}), "
          f"{'calibrated' if cal else 'uncalibrated'}, {dataroot}")
    print(format_table(result["rows"], result["mean"]))
    if args.json:
        out = {"arch": args.arch, "model_path": str(detector.weights_path), "version": detector.version,
               "calibrated": cal is not None, "dataroot": dataroot, "input_size": args.input_size, **result}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{args.json}.tmp"
        Path(tmp).write_text(json.dumps(out, indent=1))
        os.replace(tmp, args.json)
    if args.plot:
        plot_curves(result["scores"], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
