"""`bitmind-lite detect IMAGE...`: the simplest useful thing to do with the model.

A detector that names the generator (`--detector dnadet`) adds its attribution: the most likely architecture and
its probability (with --json, every class's probability).

Exit status: 0 every image scored; 1 some could not be read (the others are still scored); 2 bad options, unusable
weights, or no path that is a file (checked before the model loads: `detect DIR` says to pass the files in it).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from bitmind_lite.detectors import create_detector, list_detectors
from bitmind_lite.log import setup_logging


def _verdict(p: float, threshold: float) -> str:
    return "AI-generated" if p > threshold else "real"


def score(detector, img: Image.Image) -> tuple[float, dict | None]:
    """(P(AI), the detector's attribution dict or None) for one image."""
    p, guesses = detector.predict_with_attribution(torch.stack([detector.preprocess(img)]))
    return float(p[0]), guesses[0] if guesses else None


def _attribution_text(guess: dict | None) -> str:
    if guess is None:
        return ""
    p = guess.get("probs", {}).get(guess["label"])
    return f"\tarchitecture={guess['label']}" + (f" ({p:.2f})" if p is not None else "")


def path_problem(path: str) -> str | None:
    """Why `path` cannot be an image file, before any model is loaded; None when it is a file."""
    p = Path(path)
    if p.is_dir():
        return f"{path}: is a directory; pass the image files in it (e.g. {p / '*.jpg'})"
    if not p.exists():
        return f"{path}: no such file"
    if not p.is_file():
        return f"{path}: not a regular file"
    return None


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
    setup_logging(args.log_level, stdout=False)  # stdout is the verdicts (and --json rows): logs stay on stderr
    problems = [path_problem(path) for path in args.images]
    for problem in filter(None, problems):
        print(f"bitmind-lite detect: {problem}", file=sys.stderr)
    images = [path for path, problem in zip(args.images, problems) if problem is None]
    if not images:
        return 2
    try:
        detector = create_detector(args.detector, weights=args.weights, device=args.device)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"bitmind-lite detect: {e}", file=sys.stderr)
        return 2
    failures = len(args.images) - len(images)
    for path in images:
        try:
            with Image.open(path) as im:
                im.load()
                p, guess = score(detector, im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            failures += 1
            print(f"{path}: cannot read image: {e}", file=sys.stderr)
            continue
        if args.json:
            row = {"path": path, "p_ai": round(p, 6), "verdict": _verdict(p, args.threshold),
                   "detector": detector.describe()}
            print(json.dumps(row if guess is None else {**row, "attribution": guess}))
        else:
            print(f"{path}\tP(AI)={p:.4f}\t{_verdict(p, args.threshold)}{_attribution_text(guess)}")
    return 1 if failures else 0
