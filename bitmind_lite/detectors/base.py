"""What every detector is: `preprocess(PIL) -> Tensor`, `predict(batch) -> Tensor[B]` of P(AI-generated).

Preprocessing rule (why: NPR reads the up-sampling traces that any interpolation would overwrite):
  * never resize; convert to RGB and work on native pixels;
  * an image at least `input_size` on both sides is center-cropped to `input_size` x `input_size`;
  * a smaller side is tiled (the image repeated, as the reference "translate_duplicate" does) and then cropped,
    so every tensor in a batch has the same shape;
  * crop offsets are even, so the 2x2 grid NPR reads stays aligned with the image's own grid;
  * ImageNet mean/std normalisation, as in training.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from loguru import logger
from PIL import Image

# Checkpoint helpers live in checkpoint.py; re-exported here because base_miner/, bench/ and tests import them from
# this module.
from bitmind_lite.detectors.checkpoint import (  # noqa: F401
    Calibration, calibration_path, load_calibration, load_into, load_state_dict, save_calibration, weights_fingerprint)
from bitmind_lite.detectors.runtimes import prepare_runtime, resolve_runtime

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 256


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when present, else cpu. Asking for cuda without one is a clear error, not a silent fallback."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use --device auto or cpu)")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda[:N]")
    return torch.device(device)


def crop_or_tile(img: Image.Image, size: int) -> Image.Image:
    """Native-pixel square of `size`: even-offset center crop when large enough, tiling when too small."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    w, h = img.size
    if w < size or h < size:  # tile: repeat the image until both sides reach `size`
        reps_x, reps_y = -(-size // w), -(-size // h)
        canvas = Image.new("RGB", (w * reps_x, h * reps_y))
        for i in range(reps_x):
            for j in range(reps_y):
                canvas.paste(img, (i * w, j * h))
        img, (w, h) = canvas, canvas.size
        left = top = 0
    else:
        left, top = ((w - size) // 2) & ~1, ((h - size) // 2) & ~1
    return img.crop((left, top, left + size, top + size))


# x / 255 then (x - mean) / std folded into one multiply-add per channel.
_SCALE = (1.0 / (255.0 * np.asarray(IMAGENET_STD, dtype=np.float32))).astype(np.float32)
_OFFSET = (-np.asarray(IMAGENET_MEAN, dtype=np.float32) / np.asarray(IMAGENET_STD, dtype=np.float32)).astype(np.float32)


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """HxWx3 uint8 PIL -> 3xHxW float32, ImageNet-normalised.

    Done in numpy on the calling thread: small torch ops on a busy CPU wait on torch's thread pool (measured 2.5 ms
    -> 40 ms per image on a loaded 2-core miner), while this stays about 1 ms.
    """
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32) * _SCALE + _OFFSET
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class Detector:
    """Base class. Subclasses set `name`/`version` and implement `predict`; most keep the shared `preprocess`."""

    name: str = "detector"
    version: str = "0"
    trainable: bool = False

    def __init__(self, device: str | torch.device = "auto", input_size: int = DEFAULT_INPUT_SIZE):
        self.device = resolve_device(device)
        self.input_size = int(input_size)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return to_normalized_tensor(crop_or_tile(img, self.input_size))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_with_attribution(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[dict] | None]:
        """(P(AI) as `predict` returns it, one `protocol.Attribution`-shaped dict per image or None). Detectors that
        can name the generator override this; the miner sends what it returns along with the prediction."""
        return self.predict(batch), None

    def predict_images(self, images: list[Image.Image]) -> list[float]:
        """Convenience for CLIs and tests: preprocess, stack, predict, return floats."""
        batch = torch.stack([self.preprocess(im) for im in images])
        return [float(p) for p in self.predict(batch)]

    def describe(self) -> str:
        return f"{self.name}/{self.version}"


class TorchDetector(Detector):
    """A detector backed by an nn.Module that outputs one logit per image (P = sigmoid(logit)).

    Runtimes (`runtime=`) are speed paths over the same weights; `eager` is the reference.
    `pretrained=False` builds a freshly initialised network (what the trainer starts from), timm-style.
    `calibrate=True` applies the checkpoint's sidecar calibration (see `checkpoint.Calibration`) when there is one.
    """

    trainable = True

    def __init__(
        self,
        build: Callable[[], torch.nn.Module],
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        input_size: int = DEFAULT_INPUT_SIZE,
        runtime: str = "eager",
        pretrained: bool = True,
        calibrate: bool = True,
    ):
        super().__init__(device=device, input_size=input_size)
        self._build = build
        self.calibrate = calibrate
        calibration = None
        self.weights_path: Path | None = Path(weights) if weights and pretrained else None
        self.requested_runtime = runtime  # "auto" is resolved per checkpoint: int8 needs the checkpoint's cached model
        model = build()
        if self.weights_path is not None:
            load_into(model, self.weights_path)
            self.version = weights_fingerprint(self.weights_path)
            calibration = load_calibration(self.weights_path) if calibrate else None
        else:
            if pretrained:
                logger.warning(f"{self.name}: no weights given; serving an untrained network (predictions are noise)")
            self.version = "untrained"
        # (runtime model, calibration) live in one attribute, swapped by one assignment, so a predict() running
        # during reload() never pairs new weights with the old calibration.
        served, self.runtime = self._prepare(model, self.weights_path)
        self._serving: tuple[torch.nn.Module, Calibration | None] = (served, calibration)

    @property
    def model(self) -> torch.nn.Module:
        return self._serving[0]

    @property
    def calibration(self) -> Calibration | None:
        return self._serving[1]

    def _prepare(self, model: torch.nn.Module, weights: str | os.PathLike | None) -> tuple[torch.nn.Module, str]:
        """(the model wrapped for the requested runtime, the runtime's resolved name)."""
        runtime = resolve_runtime(self.requested_runtime, self.device, weights, self.input_size)
        model = model.to(self.device).eval()
        return prepare_runtime(model, runtime, self.device, self.input_size, weights=weights), runtime

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw network logits (no calibration), float32 on the CPU: what calibration is fitted on."""
        with torch.inference_mode():
            return self.model(batch.to(self.device, non_blocking=True)).float().cpu()

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        model, cal = self._serving
        with torch.inference_mode():
            logits = model(batch.to(self.device, non_blocking=True)).float().cpu()
        return torch.sigmoid(cal.apply(logits) if cal is not None else logits)

    def reload(self, weights: str | os.PathLike) -> None:
        """Load new weights into a fresh model, then swap it in with one assignment (in-flight calls keep the old)."""
        model = self._build()
        load_into(model, weights)  # raises CheckpointError on a bad file: the old model stays
        cal = load_calibration(weights) if self.calibrate else None  # a corrupt sidecar raises too
        model, runtime = self._prepare(model, weights)
        self.weights_path = Path(weights)
        self._serving, self.runtime = (model, cal), runtime
        self.version = weights_fingerprint(self.weights_path)
