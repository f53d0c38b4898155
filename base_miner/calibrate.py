"""Fit the sidecar calibration of a checkpoint (Platt scaling of the logit) on held-out validation images.

    python base_miner/calibrate.py --model_path weights/npr.pth --arch npr --dataroot DATA/val

Writes weights/npr.calib.json next to the checkpoint; `create_detector` applies it from then on (see
`bitmind_lite.detectors.base.Calibration`). Fit it on images the network never trained on: real photos from a
held-out pool are what fixes the "biased to fake" threshold. Classes are weighted equally, so the fitted 0.5 point
balances real and fake errors however many of each the folder holds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[0] = str(ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from base_miner.data import EvalDataset, collect_samples, loader  # noqa: E402
from base_miner.metrics import binary_metrics  # noqa: E402
from bitmind_lite.detectors import create_detector  # noqa: E402
from bitmind_lite.detectors.base import Calibration, save_calibration, weights_fingerprint  # noqa: E402


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(scale, bias) of P = sigmoid(scale * logit + bias), class-balanced, lightly regularised."""
    if len(set(labels.tolist())) < 2:
        raise ValueError("calibration needs real and fake images (both 0_real and 1_fake)")
    lr = LogisticRegression(C=1.0, class_weight="balanced")
    lr.fit(logits.reshape(-1, 1), labels)
    scale, bias = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if scale <= 0:
        raise ValueError(f"the detector ranks these images backwards (fitted scale {scale:.3g}); not calibrating")
    return scale, bias


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="calibrate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True)
    p.add_argument("--arch", default="npr")
    p.add_argument("--dataroot", required=True, nargs="+", help="folder(s) with 0_real/1_fake below them")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--input_size", type=int, default=256)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        det = create_detector(args.arch, weights=args.model_path, device=args.device, input_size=args.input_size,
                              calibrate=False)
        samples = [s for root in args.dataroot for s in collect_samples(root)]
        if not samples:
            raise ValueError(f"no images under {args.dataroot} (expected .../0_real|1_fake/*.png)")
        ys, zs = [], []
        for x, y in loader(EvalDataset(samples, det.preprocess), args.batch_size):
            zs.append(det.logits(x))
            ys.append(y)
        labels, logits = torch.cat(ys).numpy().astype(int), torch.cat(zs).numpy().astype(np.float64)
        scale, bias = fit_platt(logits, labels)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"calibrate.py: error: {e}", file=sys.stderr)
        return 2
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    before, after = binary_metrics(labels, sig(logits)), binary_metrics(labels, sig(scale * logits + bias))
    meta = {"fitted_on": [str(r) for r in args.dataroot], "n_real": before["n_real"], "n_fake": before["n_fake"],
            "input_size": args.input_size, "before": before, "after_in_sample": after}
    path = save_calibration(args.model_path, Calibration(scale, bias, weights_fingerprint(args.model_path), meta))
    print(f"scale {scale:.4f} bias {bias:.4f} (0.5 now at raw logit {-bias / scale:.3f}); on the fitting set: "
          f"real acc {before['r_acc']:.3f} -> {after['r_acc']:.3f}, fake acc {before['f_acc']:.3f} -> "
          f"{after['f_acc']:.3f}\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
