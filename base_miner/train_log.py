"""What a training run shows while and after it runs: TensorBoard scalars, hparams, and curves.png.

Every TensorBoard scalar is logged against the global optimizer step (never the epoch), so train and validation
curves share one x axis; validation has loss, Acc, AP, AUC and real/fake Acc. The run's options are logged as
hparams with the validation metrics as their results (TensorBoard's HPARAMS tab compares runs).
"""
from __future__ import annotations

import os
from pathlib import Path

VAL_KEYS = ("loss", "acc", "ap", "auc", "r_acc", "f_acc")
HPARAM_METRICS = ("val/loss", "val/acc", "val/ap", "val/auc")


def _hparam_value(v):
    """TensorBoard hparams take numbers, strings and bools; everything else is shown as its text."""
    return v if isinstance(v, (int, float, str, bool)) and v is not None else str(v)


class TrainLog:
    """TensorBoard writer for one run (main process only)."""

    def __init__(self, logdir: Path, args):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(str(logdir))
        # hparams go into this run's own event file (add_hparams would make a second run folder per call)
        exp, ssi, sei = hparams({k: _hparam_value(v) for k, v in sorted(vars(args).items())},
                                {m: float("nan") for m in HPARAM_METRICS})
        for summary in (exp, ssi, sei):
            self.writer._get_file_writer().add_summary(summary)

    def step(self, step: int, **scalars: float) -> None:
        for name, value in scalars.items():
            if value is not None and value == value:  # skip None and NaN
                self.writer.add_scalar(f"train/{name}", value, step)

    def epoch(self, step: int, record: dict) -> None:
        """End of an epoch (or a stop mid-epoch): epoch means and validation, at the step reached."""
        self.step(step, epoch_loss=record["train_loss"], acc=record["train_acc"], lr=record["lr"],
                  epoch=record["epoch"] + 1)
        for key in VAL_KEYS:
            value = (record.get("val") or {}).get(key)
            if value is not None:
                self.writer.add_scalar(f"val/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_curves(history: list[dict], path: Path, title: str = "") -> None:
    """Loss (train and val) and accuracy / AP / AUC per epoch, against the optimizer step; atomic write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h.get("global_step", h["epoch"] + 1) for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(steps, [h["train_loss"] for h in history], "o-", label="train loss")
    val = [(s, h["val"]) for s, h in zip(steps, history) if h.get("val")]
    pts = [(s, v["loss"]) for s, v in val if v.get("loss") is not None]
    if pts:
        a1.plot(*zip(*pts), "s--", label="val loss")
    a1.set_xlabel("step"), a1.set_ylabel("BCE"), a1.legend(), a1.grid(alpha=0.3)
    a2.plot(steps, [h["train_acc"] for h in history], "o-", label="train acc")
    for key in ("acc", "ap", "auc", "r_acc", "f_acc"):
        pts = [(s, v[key]) for s, v in val if v.get(key) is not None]
        if pts:
            a2.plot(*zip(*pts), "s--", label=f"val {key}")
    a2.set_xlabel("step"), a2.set_ylim(0, 1.02), a2.legend(fontsize=8), a2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
