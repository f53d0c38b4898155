"""Evaluate a checkpoint the way the NPR paper does (per generator Acc at 0.5, AP, real Acc, fake Acc, then the
unweighted mean over generators), plus what the validator pays for: AUC, MCC, Brier and the reward itself.

    python base_miner/test.py --model_path weights/npr.pth --dataroot DATA/test --batch_size 32 \\
        [--arch npr] [--classes nearest,real_holdout] [--jpeg 75,90] [--json OUT.json] [--plot OUT.png]

DATA/test holds one folder per generator, each with 0_real/1_fake (sub-categories are concatenated), or is itself
such a folder. A folder with real images only (e.g. test/real_holdout, photos never trained on) has no AP/AUC/MCC:
it is left out of the mean and gets its own line, the share of reals called real (the "biased to fake" check).
`reward` is the validator's own reward function (bitmind_lite.validator.reward) averaged over random windows of
the folder's answers. `--jpeg 75,90` evaluates the same images again after a JPEG re-encode at each quality,
`--blur 1,2` after a Gaussian blur of each sigma.
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
from base_miner.metrics import binary_metrics, format_table, is_two_class, mean_row  # noqa: E402
from bitmind_lite.detectors import create_detector, list_detectors  # noqa: E402
from bitmind_lite.detectors.base import weights_fingerprint  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="checkpoint (default: the bundled weights/<arch>.pth)")
    p.add_argument("--dataroot", default=None,
                   help="folder of generator folders with 0_real/1_fake (default: datasets/npr-procedural/test)")
    p.add_argument("--classes", default="", help="comma-separated generator folders to test (default: all)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--arch", default="npr", help="registered detector the checkpoint belongs to")
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", default="eager", help="inference runtime (eager, channels_last, onnx, ...)")
    p.add_argument("--input_size", type=int, default=256, help="crop/tile size (no resize)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no_calib", action="store_true", help="ignore the checkpoint's .calib.json (raw sigmoid)")
    p.add_argument("--jpeg", default="", help="also test after a JPEG re-encode at these qualities, e.g. 75,90")
    p.add_argument("--blur", default="", help="also test after a Gaussian blur of these sigmas, e.g. 1,2")
    p.add_argument("--json", default=None, help="write every metric (and per-image scores) here")
    p.add_argument("--plot", default=None, help="write per-generator ROC and precision-recall curves here (PNG)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def checkpoint_meta(weights: Path | None) -> dict | None:
    """What train.py recorded about a checkpoint (`<ckpt>.meta.json`: arch, epoch, data, val metrics), when it is
    there and belongs to these very weights."""
    if weights is None:
        return None
    path = Path(weights).with_suffix(".meta.json")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("weights") == weights_fingerprint(weights) else None


def score_samples(detector, samples, batch_size: int, workers: int = 0, jpeg: int | None = None, bar=None,
                  blur: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    ys, ps = [], []
    for x, y in loader(EvalDataset(samples, detector.preprocess, jpeg=jpeg, blur=blur), batch_size, workers):
        ps.append(detector.predict(x))
        ys.append(y)
        if bar is not None:
            bar.update(len(y))
    return torch.cat(ys).numpy().astype(int), torch.cat(ps).numpy()


def evaluate_folders(detector, dataroot, batch_size: int = 32, workers: int = 0, classes=(), jpeg: int | None = None,
                     bar=None, blur: float | None = None) -> dict:
    """{"rows": {generator: metrics}, "mean": over two-class folders, "real_only": {folder: share called real},
    "scores": {generator: {"y": [...], "p": [...]}}}."""
    rows, scores = {}, {}
    for name, folder in group_folders(dataroot, classes).items():
        y, p = score_samples(detector, collect_samples(folder), batch_size, workers, jpeg, bar, blur)
        rows[name] = binary_metrics(y, p)
        scores[name] = {"y": y.tolist(), "p": [round(float(v), 6) for v in p]}
    real_only = {k: {"real_acc": r["r_acc"], "n_real": r["n_real"]} for k, r in rows.items()
                 if not is_two_class(r) and r["n_real"]}
    return {"rows": rows, "mean": mean_row(rows), "real_only": real_only, "scores": scores}


def model_label(arch: str, version: str, meta: dict | None) -> str:
    label = f"{arch} {version}"
    if meta:
        label += f" (epoch {meta.get('epoch', 0) + 1}, trained on {','.join(meta.get('train_classes', [])) or '?'})"
    return label


def plot_curves(scores: dict, rows: dict, path: str, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (roc, pr) = plt.subplots(1, 2, figsize=(11, 4.8))
    for name, s in scores.items():
        y, p = np.array(s["y"]), np.array(s["p"])
        if len(set(y)) < 2:
            continue  # one class only: no curve (e.g. held-out real photos)
        fpr, tpr, _ = roc_curve(y, p)
        prec, rec, _ = precision_recall_curve(y, p)
        roc.plot(fpr, tpr, label=f"{name} (AUC {rows[name]['auc']:.3f})")
        pr.plot(rec, prec, label=f"{name} (AP {rows[name]['ap']:.3f})")
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    mean = mean_row(rows)
    auc, ap = (f"{mean[k]:.3f}" if mean[k] is not None else "-" for k in ("auc", "ap"))
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC (mean AUC {auc})")
    pr.set(xlabel="recall", ylabel="precision", title=f"precision-recall (mean AP {ap})", ylim=(0, 1.02))
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_qualities(text: str) -> list[int]:
    try:
        qualities = [int(q) for q in text.split(",") if q.strip()]
    except ValueError:
        raise ValueError(f"--jpeg {text!r}: expected qualities like 75,90") from None
    if any(not 1 <= q <= 100 for q in qualities):
        raise ValueError(f"--jpeg {text!r}: qualities must be within 1..100")
    return qualities


def parse_sigmas(text: str) -> list[float]:
    try:
        sigmas = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--blur {text!r}: expected sigmas like 1,2") from None
    if any(not 0 < s <= 20 for s in sigmas):
        raise ValueError(f"--blur {text!r}: sigmas must be within (0, 20]")
    return sigmas


def write_json(path: str, obj) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.workers < 0:
        parser.error("--batch_size must be >= 1 and --workers >= 0")
    if args.input_size < 2 or args.input_size % 2:
        parser.error("--input_size must be even")
    if args.arch not in list_detectors():
        parser.error(f"unknown --arch {args.arch!r}; registered: {', '.join(list_detectors())}")
    try:
        qualities, sigmas = parse_qualities(args.jpeg), parse_sigmas(args.blur)
    except ValueError as e:
        parser.error(str(e))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    dataroot = args.dataroot or str(ROOT / "datasets" / "npr-procedural" / "test")
    try:
        detector = create_detector(args.arch, weights=args.model_path, device=args.device, runtime=args.runtime,
                                   input_size=args.input_size, calibrate=not args.no_calib)
        if getattr(detector, "version", None) == "untrained":
            raise FileNotFoundError(f"no --model_path given and no bundled weights for {args.arch}")
        folders = group_folders(dataroot, classes)
        from tqdm import tqdm

        total = sum(len(collect_samples(f)) for f in folders.values()) * (1 + len(qualities) + len(sigmas))
        with tqdm(total=total, desc="test", unit="img", disable=args.quiet, leave=False) as bar:
            result = evaluate_folders(detector, dataroot, args.batch_size, args.workers, classes, bar=bar)
            jpeg = {str(q): evaluate_folders(detector, dataroot, args.batch_size, args.workers, classes, q, bar)
                    for q in qualities}
            blur = {f"{s:g}": evaluate_folders(detector, dataroot, args.batch_size, args.workers, classes, bar=bar,
                                               blur=s) for s in sigmas}
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"test.py: error: {e}", file=sys.stderr)
        return 2
    weights = getattr(detector, "weights_path", None)  # an ensemble has members' weights, not one file
    cal, meta = getattr(detector, "calibration", None), checkpoint_meta(weights)
    label = model_label(args.arch, detector.version, meta)
    print(f"{label}: {weights}, {'calibrated' if cal else 'uncalibrated'}, {dataroot}")
    print(format_table(result["rows"], result["mean"]))
    for q, res in jpeg.items():
        print(f"\nafter JPEG quality {q}:\n{format_table(res['rows'], res['mean'])}")
    for s, res in blur.items():
        print(f"\nafter Gaussian blur sigma {s}:\n{format_table(res['rows'], res['mean'])}")
    if args.json:
        write_json(args.json, {"arch": args.arch, "model_path": str(weights), "version": detector.version,
                               "checkpoint": meta, "calibrated": cal is not None, "dataroot": dataroot,
                               "input_size": args.input_size, **result, "jpeg": jpeg, "blur": blur})
    if args.plot:
        plot_curves(result["scores"], result["rows"], args.plot, title=f"{label}  |  {dataroot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
