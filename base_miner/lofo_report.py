"""The leave-one-family-out report (base_miner/lofo.py): one cell per (left-out family, detector) from test.py's
JSON, and the markdown table with a mean row per detector."""
from __future__ import annotations

from bitmind_lite.data.layout import HOLDOUT_CLASS as HOLDOUT

COLUMNS = (("acc", "Acc"), ("ap", "AP"), ("auc", "AUC"), ("mcc", "MCC"), ("brier", "Brier"), ("reward", "reward"))


def cell_summary(family: str, arch: str, result: dict, epochs: float, seconds: float) -> dict:
    """One table row from test.py's JSON: metrics on the left-out family, unseen reals, JPEG accuracies (and how
    long the run trained)."""
    row = result["rows"][family]
    cell = {"family": family, "arch": arch, **{k: row[k] for k, _ in COLUMNS}, "r_acc": row["r_acc"],
            "f_acc": row["f_acc"], "n": row["n_real"] + row["n_fake"],
            "real_holdout_acc": result["rows"].get(HOLDOUT, {}).get("r_acc"),
            "jpeg_acc": {q: res["rows"][family]["acc"] for q, res in result["jpeg"].items()},
            "version": result["version"], "checkpoint": result.get("checkpoint"),
            "epochs": epochs, "train_seconds": round(seconds, 1)}
    return cell


def fmt(v, pct=True) -> str:
    return "-" if v is None else f"{100 * v:.1f}" if pct else f"{v:.3f}"


def markdown(cells: list[dict], qualities: list[str], config: dict) -> str:
    head = ["left out", "arch"] + [name for _, name in COLUMNS] + ["real holdout Acc"] + \
        [f"Acc@JPEG{q}" for q in qualities]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = list(cells)
    for arch in dict.fromkeys(c["arch"] for c in cells):
        mine = [c for c in cells if c["arch"] == arch]
        mean = {"family": "**mean**", "arch": arch, "jpeg_acc": {}}
        for key in [k for k, _ in COLUMNS] + ["real_holdout_acc"]:
            vals = [c[key] for c in mine if c[key] is not None]
            mean[key] = sum(vals) / len(vals) if vals else None
        for q in qualities:
            vals = [c["jpeg_acc"].get(q) for c in mine if c["jpeg_acc"].get(q) is not None]
            mean["jpeg_acc"][q] = sum(vals) / len(vals) if vals else None
        rows.append(mean)
    for c in rows:
        vals = [fmt(c[k], k in ("acc", "ap", "auc")) for k, _ in COLUMNS] + [fmt(c["real_holdout_acc"])] + \
            [fmt(c["jpeg_acc"].get(q)) for q in qualities]
        lines.append("| " + " | ".join([c["family"], c["arch"]] + vals) + " |")
    legend = (f"\nAcc, AP, AUC, real-holdout Acc and Acc@JPEG in %; MCC, Brier, reward (what the validator would pay, "
              f"bitmind_lite.validator.reward) as numbers. Each row: trained without that family ({config['families']}"
              f", {config['train']} train pairs, {config['epochs'] or '-'} epochs / {config['minutes'] or '-'} min, "
              f"seed {config['seed']}), tested on its {config['test_per_family']} test pairs; real holdout = share "
              "of unseen real photos called real.\n")
    return "\n".join(lines) + "\n" + legend
