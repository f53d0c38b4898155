"""Evaluate a DNA-Det checkpoint (the `eval` stage of base_miner/train_dnadet.py) through the served detector.

On D/test (held-out models, test photos) and D/test_seen (trained models, test photos) it computes the
cross-model attribution accuracy per generator class (the top generator class is right) and its macro mean,
the share of each class called AI, the real-vs-AI metrics (accuracy, AP, AUC, ... from base_miner.metrics,
with the test reals) and the confusion matrix (argmax over every class, real included). It writes O/eval.json,
O/cross_model.md (the table) and O/confusion.png (held-out models).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from base_miner.data import decode
from base_miner.metrics import binary_metrics
from base_miner.test import write_json
from bitmind_lite.detectors.dnadet import REAL


def load_folder(folder: Path) -> list[np.ndarray]:
    """Every PNG of one class folder of the attribution set, decoded (the training stages read them too)."""
    return [decode(p) for p in sorted(folder.glob("*.png"))]


def score_split(detector, root: Path, split: str) -> list[tuple[str, float, dict]]:
    """(true class, P(AI), attribution) for every image of D/<split>, preprocessed as the miner does."""
    rows = []
    for c in detector.classes:
        images = [Image.fromarray(a) for a in load_folder(root / split / c)]
        for k in range(0, len(images), 32):
            batch = torch.stack([detector.preprocess(im) for im in images[k:k + 32]])
            p_ai, attrs = detector.predict_with_attribution(batch)
            rows += [(c, float(p), a) for p, a in zip(p_ai, attrs)]
    return rows


def summarize(rows: list, reals: list, classes: tuple[str, ...]) -> dict:
    """Attribution accuracy per generator class (the top generator class is right), P(AI) > 0.5 rates, the
    real-vs-AI metrics (with the test reals) and the confusion matrix (argmax over every class, real included)."""
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    for c, _, a in rows + reals:
        probs = a["probs"]
        matrix[classes.index(c), classes.index(max(probs, key=probs.get))] += 1
    per_class = {}
    for c in classes:
        mine = [(p, a) for cls, p, a in rows + (reals if c == REAL else []) if cls == c]
        if mine:
            per_class[c] = {"n": len(mine), "called_ai": float(np.mean([p > 0.5 for p, _ in mine])),
                            "attribution_acc": None if c == REAL else float(np.mean([a["label"] == c
                                                                                     for _, a in mine]))}
    fakes = [v["attribution_acc"] for c, v in per_class.items() if c != REAL]
    binary = binary_metrics([c != REAL for c, _, _ in rows + reals], [p for _, p, _ in rows + reals],
                            reward_windows=0)
    return {"per_class": per_class, "attribution_acc_macro": float(np.mean(fakes)) if fakes else None,
            "real_vs_ai": binary, "confusion": matrix.tolist()}


def cross_model_table(test: dict, seen: dict) -> str:
    pct = lambda v: "" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| class | held-out models: n | attribution acc | called AI | trained models, test photos: n | "
             "attribution acc | called AI |", "|---|---|---|---|---|---|---|"]
    for c, t in test["per_class"].items():
        s = seen["per_class"].get(c, {}) if c != REAL else {}
        lines.append(f"| {c} | {t['n']} | {pct(t['attribution_acc'])} | {pct(t['called_ai'])} | {s.get('n', '')} | "
                     f"{pct(s.get('attribution_acc'))} | {pct(s.get('called_ai'))} |")
    for name, m in (("held-out models", test), ("trained models", seen)):
        b = m["real_vs_ai"]
        lines.append(f"| **{name}: mean / real-vs-AI** | {b['n_real']}+{b['n_fake']} | "
                     f"{pct(m['attribution_acc_macro'])} | acc {pct(b['acc'])}, AP {pct(b['ap'])}, real "
                     f"{pct(b['r_acc'])}, AI {pct(b['f_acc'])} | | | |")
    return "\n".join(lines) + "\n"


def plot_confusion(matrix: list[list[int]], classes: tuple[str, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(matrix, dtype=float)
    rates = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(0.55 * len(classes) + 3, 0.5 * len(classes) + 2.5))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i, j in zip(*np.nonzero(m)):
        ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > .5 else "k")
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted (argmax over all classes)"), ax.set_ylabel("true class"), ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def evaluate(root: Path, weights: Path, out: Path, device: str, size: int) -> dict:
    """Score the checkpoint on D/test (held-out models) and D/test_seen; write eval.json, cross_model.md and
    confusion.png (held-out models) to `out`."""
    from bitmind_lite.detectors import create_detector

    detector = create_detector("dnadet", weights=weights, device=device, input_size=size)
    test = score_split(detector, root, "test")
    reals = [r for r in test if r[0] == REAL]
    test = [r for r in test if r[0] != REAL]
    if not test or not reals:
        raise SystemExit(f"{root}/test holds no generator or no real images (run --stage data first)")
    result = {"weights": str(weights), "version": detector.version, "input_size": size,
              "test": summarize(test, reals, detector.classes),
              "test_seen": summarize([r for r in score_split(detector, root, "test_seen") if r[0] != REAL], reals,
                                     detector.classes)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "cross_model.md").write_text(cross_model_table(result["test"], result["test_seen"]))
    plot_confusion(result["test"]["confusion"], detector.classes, out / "confusion.png",
                   f"DNA-Det {detector.version}: held-out models, test photos")
    write_json(out / "eval.json", result)
    print((out / "cross_model.md").read_text(), flush=True)
    return result
