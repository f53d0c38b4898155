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

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from loguru import logger
from PIL import Image

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


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """HxWx3 uint8 PIL -> 3xHxW float32, ImageNet-normalised."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return arr.sub_(mean).div_(std)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint saved by our trainer or the reference code: a plain state_dict, {'model': sd}, or DDP."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def weights_fingerprint(path: str | os.PathLike) -> str:
    """A short content hash: the detector version a miner reports, so validators can tell checkpoints apart."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


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

    def predict_images(self, images: list[Image.Image]) -> list[float]:
        """Convenience for CLIs and tests: preprocess, stack, predict, return floats."""
        batch = torch.stack([self.preprocess(im) for im in images])
        return [float(p) for p in self.predict(batch)]

    def describe(self) -> str:
        return f"{self.name}/{self.version}"


class TorchDetector(Detector):
    """A detector backed by an nn.Module that outputs one logit per image (P = sigmoid(logit)).

    Runtimes (`runtime=`) are speed paths over the same weights; `eager` is the reference.
    """

    trainable = True

    def __init__(
        self,
        build: Callable[[], torch.nn.Module],
        weights: str | os.PathLike | None = None,
        device: str | torch.device = "auto",
        input_size: int = DEFAULT_INPUT_SIZE,
        runtime: str = "eager",
    ):
        super().__init__(device=device, input_size=input_size)
        self._build = build
        self.runtime = runtime
        self.weights_path: Path | None = Path(weights) if weights else None
        model = build()
        if self.weights_path is not None:
            model.load_state_dict(load_state_dict(self.weights_path), strict=True)
            self.version = weights_fingerprint(self.weights_path)
        else:
            logger.warning(f"{self.name}: no weights given; serving an untrained network (predictions are noise)")
            self.version = "untrained"
        self.model = self._prepare(model)

    def _prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        from bitmind_lite.detectors.runtimes import prepare_runtime

        model = model.to(self.device).eval()
        return prepare_runtime(model, self.runtime, self.device, self.input_size)

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits = self.model(batch.to(self.device, non_blocking=True))
        return torch.sigmoid(logits.float()).cpu()

    def reload(self, weights: str | os.PathLike) -> None:
        """Load new weights into a fresh model, then swap it in with one assignment (in-flight calls keep the old)."""
        model = self._build()
        model.load_state_dict(load_state_dict(weights), strict=True)  # raises on a bad file: the old model stays
        model = self._prepare(model)
        self.weights_path = Path(weights)
        self.model, self.version = model, weights_fingerprint(self.weights_path)
