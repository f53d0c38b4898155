"""Checkpoints: reading a state_dict safely, fingerprints, calibration sidecars, and where bundled weights live.

The one owner of "a weights file": detectors, runtimes, the miner's hot-swap, base_miner/ and bench/ import from
here (nothing here imports a detector, so `base` -> `runtimes` -> `checkpoint` has no cycle).

  * `load_state_dict(path)` only ever unpickles tensors and plain containers (`weights_only=True`): a checkpoint is
    data from the internet and may not run code. A file that is not one raises `CheckpointError` naming the file and
    what was expected, never torch's advice to retry with `weights_only=False`.
  * `load_into(model, path)` checks names and shapes before loading, so a checkpoint of another network is one
    sentence, not torch's list of every missing key.
  * `weights_fingerprint(path)` is the detector version a miner reports; a calibration sidecar
    (`npr.pth` -> `npr.calib.json`) is only applied to the weights it was fitted for.
  * `weights_dir()` finds the bundled weights from a source checkout, an editable install or an installed wheel.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from loguru import logger

EXPECTED = "a state_dict saved with torch.save(model.state_dict(), PATH) (or {'model': state_dict})"
REPO_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"  # a source checkout or an editable install
PACKAGED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"  # bitmind_lite/weights in an installed wheel


class CheckpointError(ValueError):
    """A weights or calibration file that cannot be used; the message names the file and the fix."""


# ---------------------------------------------------------------- bundled weights
def weights_dir() -> Path:
    """Where bundled checkpoints live: $BITMIND_WEIGHTS_DIR, else `bitmind_lite/weights` inside an installed wheel,
    else the repository's `weights/` folder."""
    env = os.environ.get("BITMIND_WEIGHTS_DIR")
    if env:
        return Path(env).expanduser()
    return PACKAGED_WEIGHTS if PACKAGED_WEIGHTS.is_dir() else REPO_WEIGHTS


def default_weights(name: str) -> Path | None:
    """The bundled checkpoint for a detector (`weights/<name>.pth`), or None when none ships."""
    path = weights_dir() / f"{name}.pth"
    return path if path.is_file() else None


# ---------------------------------------------------------------- reading a state_dict
def _why_unreadable(path: Path, error: Exception) -> str:
    """What is wrong with a file torch.load refused, in words an operator can act on (torch's own message is
    about pickle internals, or tells you to turn off the safety check)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "the file is empty"
    if isinstance(error, pickle.UnpicklingError) and (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        return ("it holds Python objects besides tensors (only tensors and plain containers are loaded, so that a "
                "checkpoint cannot run code)")
    if head[:2] == b"PK":
        return "it is a truncated or corrupt torch.save archive (copy it again, or re-save it)"
    if head[:1] != b"\x80":
        return f"it is not a torch.save file at all (it starts with {head!r})"
    return f"it is a damaged pickle ({type(error).__name__})"


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint saved by our trainer or the reference code: a plain state_dict, {'model': sd}, or DDP."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"weights {path} is a directory; expected a file holding {EXPECTED}")
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before failing: the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises anything from EOFError to KeyError for a non-checkpoint
        raise CheckpointError(f"weights {path} is not a checkpoint: {_why_unreadable(path, e)}; expected {EXPECTED}") \
            from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = "an empty dict" if isinstance(obj, dict) and not obj else f"a {type(obj).__name__}"
        raise CheckpointError(f"weights {path} holds {what}, not a state_dict of tensors; expected {EXPECTED}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_into(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """`model.load_state_dict(load_state_dict(path), strict=True)`, with a short error when the checkpoint belongs
    to another network (names or shapes differ)."""
    state = load_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                if k in state and state[k].shape != v.shape]
    if missing or unexpected or reshaped:
        problems = [f"{label}: {_some(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape (file != model)", reshaped))
                    if keys]
        raise CheckpointError(f"weights {path} is not a checkpoint of {type(model).__name__} "
                              f"({len(expected)} tensors expected; {'; '.join(problems)}): was it trained for "
                              f"another detector?")
    model.load_state_dict(state, strict=True)
    return model


def weights_fingerprint(path: str | os.PathLike) -> str:
    """A short content hash: the detector version a miner reports, so validators can tell checkpoints apart."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------- calibration sidecars
@dataclass(frozen=True)
class Calibration:
    """Platt scaling of the logit, fitted on held-out validation photos: P = sigmoid(scale * logit + bias).

    Why: a detector trained on one family of fakes is "biased to fake" on real photos it never saw; shifting and
    scaling the logit on held-out photos moves the 0.5 decision point to where validation says it belongs.
    It is stored next to the weights (`weights/npr.pth` -> `weights/npr.calib.json`) with the fingerprint of the
    weights it was fitted for, so a retrained checkpoint never runs with a stale calibration.
    """

    scale: float = 1.0
    bias: float = 0.0
    weights: str = ""  # weights_fingerprint() of the checkpoint it belongs to
    meta: dict | None = None  # how it was fitted (data, counts, metrics before/after)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits * self.scale + self.bias

    @property
    def threshold_logit(self) -> float:
        """The raw logit that now maps to P = 0.5."""
        return -self.bias / self.scale


def calibration_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".calib.json")


def load_calibration(weights: str | os.PathLike) -> Calibration | None:
    """The sidecar calibration of a checkpoint, None when there is none or it belongs to other weights."""
    path = calibration_path(weights)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        cal = Calibration(float(data["scale"]), float(data["bias"]), str(data["weights"]), data.get("meta"))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a calibration file ({e}); fix or delete it") from None
    if not (math.isfinite(cal.scale) and math.isfinite(cal.bias) and cal.scale > 0):
        raise CheckpointError(f"{path}: scale must be finite and > 0, bias finite (got {cal.scale}, {cal.bias})")
    if cal.weights != weights_fingerprint(weights):
        logger.warning(f"{path} was fitted for weights {cal.weights}, not {weights_fingerprint(weights)}; ignoring it")
        return None
    return cal


def save_calibration(weights: str | os.PathLike, cal: Calibration) -> Path:
    """Write the sidecar atomically (temp file + os.replace)."""
    path = calibration_path(weights)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(cal), f, indent=2)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; it ships next to the weights
    os.replace(tmp, path)
    return path
