"""The detectors that ship with bitmind-lite. A new plugin is a factory plus `@register_detector`."""
from __future__ import annotations

import torch

from bitmind_lite.detectors.base import Detector, TorchDetector
from bitmind_lite.detectors.checkpoint import default_weights
from bitmind_lite.detectors.npr import NPRNet
from bitmind_lite.detectors.registry import register_detector


class NPRDetector(TorchDetector):
    name = "npr"


class RawPixelDetector(TorchDetector):
    name = "npr_raw"


@register_detector("npr")
def npr(weights=None, device="auto", **kw) -> Detector:
    """The NPR network on the NPR residual (the product)."""
    return NPRDetector(lambda: NPRNet(use_npr=True), weights or default_weights("npr"), device, **kw)


@register_detector("npr_raw")
def npr_raw(weights=None, device="auto", **kw) -> Detector:
    """Baseline: the same network fed raw pixels. Shows what the residual buys on unseen generators."""
    return RawPixelDetector(lambda: NPRNet(use_npr=False), weights or default_weights("npr_raw"), device, **kw)


class RandomDetector(Detector):
    """Baseline: uniform noise, whatever the image. An honest miner that should earn nothing."""

    name = "random"
    version = "uniform"

    def __init__(self, device="auto", seed: int | None = None, **kw):
        super().__init__(device="cpu", **kw)  # no model, nothing to put on a GPU
        self.generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed())

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.rand(batch.shape[0], generator=self.generator)


@register_detector("random")
def random_detector(weights=None, device="auto", runtime: str = "eager", **kw) -> Detector:
    if weights is not None:
        raise ValueError("the random detector takes no weights")
    # no network, so every runtime is the same; accepting it lets `--neuron.runtime` stay set when switching detectors
    return RandomDetector(device=device, **kw)


# Plugins that live in modules of their own register themselves on import.
from bitmind_lite.detectors import bts, dnadet, ensemble  # noqa: E402,F401
