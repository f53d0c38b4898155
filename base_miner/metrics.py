"""The NPR paper's metrics (Acc at 0.5, AP, real Acc, fake Acc), the ones the validator pays for (MCC, Brier, and its
reward itself), and the table that shows them. All from scikit-learn and bitmind_lite.validator.reward.

Label 1 = AI-generated; a score above `threshold` is called AI-generated (the reference uses `p > 0.5`).
A folder with one class only has no AP, AUC or MCC (undefined) and no reward (validators always mix both classes);
its accuracy on the class it has is still reported, and the mean over generators leaves it out.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

METRICS = ("acc", "ap", "auc", "mcc", "brier", "reward", "r_acc", "f_acc")


def validator_reward(y_true, scores, windows: int = 64, seed: int = 0) -> float:
    """The reward a validator would pay a miner that answers these scores, averaged over `windows` random streams.

    The validator scores each answer on a window of the miner's recent answers (reward.WINDOW for MCC and Brier,
    the last few for accuracy), so the reward of a set of predictions is its expectation over shuffled streams:
    each window is reward.WINDOW answers drawn at random (with replacement) from this set, fed to the validator's
    own `metrics(History)`.
    """
    from bitmind_lite.validator.reward import WINDOW, History, metrics

    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(windows):
        pick = rng.integers(0, y.size, WINDOW)
        total += metrics(History(zip(s[pick].tolist(), y[pick].tolist()))).reward
    return total / windows


def binary_metrics(y_true, scores, threshold: float = 0.5, reward_windows: int = 64) -> dict:
    """{acc, ap, auc, mcc, brier, reward, r_acc, f_acc, n_real, n_fake}; ap/auc/mcc/reward are None for one class,
    r_acc/f_acc where their class is absent. `reward_windows=0` skips the (slower) reward."""
    from sklearn.metrics import (accuracy_score, average_precision_score, brier_score_loss,  # 1-3 s import: here
                                 matthews_corrcoef, roc_auc_score)

    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"need as many scores as labels, at least one (got {s.size} scores, {y.size} labels)")
    pred = (s > threshold).astype(int)
    real, fake = y == 0, y == 1
    both = bool(real.any() and fake.any())
    with warnings.catch_warnings():  # constant predictions: MCC is 0 by definition, sklearn warns about it
        warnings.simplefilter("ignore")
        mcc = float(matthews_corrcoef(y, pred)) if both else None
    return {
        "acc": float(accuracy_score(y, pred)),
        "ap": float(average_precision_score(y, s)) if both else None,
        "auc": float(roc_auc_score(y, s)) if both else None,
        "mcc": mcc,
        "brier": float(brier_score_loss(y, s, labels=[0, 1])),
        "reward": validator_reward(y, s, reward_windows) if both and reward_windows else None,
        "r_acc": float(accuracy_score(y[real], pred[real])) if real.any() else None,
        "f_acc": float(accuracy_score(y[fake], pred[fake])) if fake.any() else None,
        "n_real": int(real.sum()),
        "n_fake": int(fake.sum()),
    }


def is_two_class(row: dict) -> bool:
    return row["n_real"] > 0 and row["n_fake"] > 0


def mean_row(rows: dict[str, dict]) -> dict:
    """Unweighted mean over the generator folders that hold both classes (the paper's tables), skipping undefined
    values; one-class folders (e.g. test/real_holdout) are left out: they get their own line."""
    rows = {k: r for k, r in rows.items() if is_two_class(r)}
    out = {}
    for key in METRICS:
        vals = [r[key] for r in rows.values() if r.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    out["n_real"] = sum(r["n_real"] for r in rows.values())
    out["n_fake"] = sum(r["n_fake"] for r in rows.values())
    out["folders"] = len(rows)
    return out


def _pct(v) -> str:
    return "    -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def _num(v) -> str:
    return "     -" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.3f}"


def format_table(rows: dict[str, dict], mean: dict | None = None) -> str:
    """Generator | Acc AP AUC (%) | MCC Brier reward | real Acc fake Acc (%) | counts, then the mean over two-class
    folders, then one line per one-class folder (for real photos: the share called real)."""
    width = max([len("generator"), len("mean")] + [len(k) for k in rows])
    head = (f"{'generator':<{width}}  {'Acc':>5}  {'AP':>5}  {'AUC':>5}  {'MCC':>6}  {'Brier':>6}  {'reward':>6}  "
            f"{'rAcc':>5}  {'fAcc':>5}  {'#real':>6}  {'#fake':>6}")

    def line(name, r):
        return (f"{name:<{width}}  {_pct(r['acc'])}  {_pct(r['ap'])}  {_pct(r['auc'])}  {_num(r['mcc'])}  "
                f"{_num(r['brier'])}  {_num(r['reward'])}  {_pct(r['r_acc'])}  {_pct(r['f_acc'])}  "
                f"{r['n_real']:>6}  {r['n_fake']:>6}")

    lines = [head, "-" * len(head)] + [line(k, r) for k, r in rows.items() if is_two_class(r)]
    if mean is not None:
        lines += ["-" * len(head), line("mean", mean)]
    for name, r in rows.items():
        if not is_two_class(r):
            what = (f"{100 * r['r_acc']:.1f}% of {r['n_real']} real images called real" if r["n_real"]
                    else f"{100 * r['f_acc']:.1f}% of {r['n_fake']} fakes called fake")
            lines.append(f"{name:<{width}}  {what} (one class: not in the mean)")
    return "\n".join(lines)
