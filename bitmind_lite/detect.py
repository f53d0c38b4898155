"""`bitmind-lite detect IMAGE...`: the simplest useful thing to do with the model."""
from __future__ import annotations

import argparse
import json
import sys

from PIL import Image, UnidentifiedImageError

from bitmind_lite.detectors import create_detector, list_detectors
from bitmind_lite.log import setup_logging


def _verdict(p: float, threshold: float) -> str:
    return "AI-generated" if p > threshold else "real"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bitmind-lite detect", description=__doc__)
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    parser.add_argument("--detector", default="npr", help=f"one of: {', '.join(list_detectors())}")
    parser.add_argument("--weights", default=None, help="checkpoint (default: bundled weights/<detector>.pth)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(AI) above this is called AI-generated")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        detector = create_detector(args.detector, weights=args.weights, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"bitmind-lite detect: {e}", file=sys.stderr)
        return 2
    failures = 0
    for path in args.images:
        try:
            with Image.open(path) as im:
                im.load()
                p = detector.predict_images([im.convert("RGB")])[0]
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            failures += 1
            print(f"{path}: cannot read image: {e}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"path": path, "p_ai": round(p, 6), "verdict": _verdict(p, args.threshold),
                              "detector": detector.describe()}))
        else:
            print(f"{path}\tP(AI)={p:.4f}\t{_verdict(p, args.threshold)}")
    return 1 if failures else 0
