"""The NPR paper's metrics (Acc at 0.5, AP, real Acc, fake Acc), all from scikit-learn, and the table that shows them.

Label 1 = AI-generated; a score above `threshold` is called AI-generated (the reference uses `p > 0.5`).
A folder with one class only has no AP (undefined); its accuracy on the class it has is still reported.
"""
from __future__ import annotations

import math

import numpy as np

COLUMNS = ("acc", "ap", "r_acc", "f_acc")


def binary_metrics(y_true, scores, threshold: float = 0.5) -> dict:
    """{acc, ap, auc, r_acc, f_acc, n_real, n_fake}; ap/auc/r_acc/f_acc are None where a class is absent."""
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score  # 1-3 s import: only here

    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"need as many scores as labels, at least one (got {s.size} scores, {y.size} labels)")
    pred = (s > threshold).astype(int)
    real, fake = y == 0, y == 1
    both = bool(real.any() and fake.any())
    return {
        "acc": float(accuracy_score(y, pred)),
        "ap": float(average_precision_score(y, s)) if both else None,
        "auc": float(roc_auc_score(y, s)) if both else None,
        "r_acc": float(accuracy_score(y[real], pred[real])) if real.any() else None,
        "f_acc": float(accuracy_score(y[fake], pred[fake])) if fake.any() else None,
        "n_real": int(real.sum()),
        "n_fake": int(fake.sum()),
    }


def mean_row(rows: dict[str, dict]) -> dict:
    """Unweighted mean over generators (the paper's tables), skipping undefined values."""
    out = {}
    for key in ("acc", "ap", "auc", "r_acc", "f_acc"):
        vals = [r[key] for r in rows.values() if r.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    out["n_real"] = sum(r["n_real"] for r in rows.values())
    out["n_fake"] = sum(r["n_fake"] for r in rows.values())
    return out


def _pct(v) -> str:
    return "   -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def format_table(rows: dict[str, dict], mean: dict | None = None) -> str:
    """Generator | Acc | AP | real Acc | fake Acc | #real | #fake, in percent, plus the mean row."""
    width = max([len("generator"), len("mean")] + [len(k) for k in rows])
    head = f"{'generator':<{width}}  {'Acc':>5}  {'AP':>5}  {'rAcc':>5}  {'fAcc':>5}  {'#real':>6}  {'#fake':>6}"
    lines = [head, "-" * len(head)]
    items = list(rows.items()) + ([("mean", mean)] if mean is not None else [])
    for i, (name, r) in enumerate(items):
        if mean is not None and i == len(rows):
            lines.append("-" * len(head))
        lines.append(f"{name:<{width}}  {_pct(r['acc'])}  {_pct(r['ap'])}  {_pct(r['r_acc'])}  {_pct(r['f_acc'])}"
                     f"  {r['n_real']:>6}  {r['n_fake']:>6}")
    return "\n".join(lines)
