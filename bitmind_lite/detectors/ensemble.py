"""An ensemble of registered detectors: P(AI) = mean of the members' P (or sigmoid of their mean logit).

    create_detector("ensemble")                                   # members="npr,bts", each with bundled weights
    create_detector("ensemble", members="npr=weights/npr.pth,bts=/tmp/bts.pth", combine="logit")
    bitmind-lite miner ... --neuron.detector ensemble

Each member keeps its own preprocess (NPR wants ImageNet-normalised pixels, BTS [0, 1] pixels), so the ensemble's
preprocess concatenates the members' flattened tensors into one 1-D tensor per image; `predict` splits a stacked
batch back into each member's Bx... tensor. The batch contract stays the same: Tensor[B] of P(AI). Each member
applies its own calibration sidecar, so the mean is over calibrated probabilities.
"""
from __future__ import annotations

import math

import torch
from PIL import Image

from bitmind_lite.detectors.base import DEFAULT_INPUT_SIZE, Detector
from bitmind_lite.detectors.registry import create_detector, register_detector

COMBINE = ("prob", "logit")
EPS = 1e-6  # P is clamped away from 0 and 1 before a logit


def parse_members(spec: str) -> list[tuple[str, str | None]]:
    """'npr,bts=PATH' -> [('npr', None), ('bts', 'PATH')]."""
    members = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, path = item.partition("=")
        members.append((name.strip(), path.strip() or None))
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members, got {spec!r} (e.g. members='npr,bts')")
    if any(name == "ensemble" for name, _ in members):
        raise ValueError("an ensemble cannot contain an ensemble")
    return members


class EnsembleDetector(Detector):
    name = "ensemble"

    def __init__(self, members: list[Detector], combine: str = "prob", device="auto",
                 input_size: int = DEFAULT_INPUT_SIZE):
        if combine not in COMBINE:
            raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
        super().__init__(device=device, input_size=input_size)
        self.members, self.combine = members, combine
        blank = Image.new("RGB", (input_size, input_size))
        self.shapes = [tuple(m.preprocess(blank).shape) for m in members]  # what each member's predict expects
        self.sizes = [math.prod(s) for s in self.shapes]
        self.version = "+".join(f"{m.name}:{m.version}" for m in members)[:64]  # the protocol allows 64 chars

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return torch.cat([m.preprocess(img).reshape(-1) for m in self.members])

    def member_probs(self, batch: torch.Tensor) -> torch.Tensor:
        """B x members matrix of each member's P(AI)."""
        if batch.dim() != 2 or batch.shape[1] != sum(self.sizes):
            raise ValueError(f"ensemble batch must be B x {sum(self.sizes)} (stacked ensemble.preprocess outputs), "
                             f"got {tuple(batch.shape)}")
        parts = torch.split(batch, self.sizes, dim=1)
        return torch.stack([m.predict(part.reshape(-1, *shape)).float().reshape(-1)
                            for m, part, shape in zip(self.members, parts, self.shapes)], 1)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        p = self.member_probs(batch).clamp(EPS, 1 - EPS)
        if self.combine == "logit":
            return torch.logit(p).mean(1)
        return torch.logit(p.mean(1))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        p = self.member_probs(batch)
        return p.mean(1) if self.combine == "prob" else torch.sigmoid(torch.logit(p.clamp(EPS, 1 - EPS)).mean(1))


@register_detector("ensemble")
def ensemble(weights=None, device="auto", members: str = "npr,bts", combine: str = "prob",
             input_size: int = DEFAULT_INPUT_SIZE, **kw) -> Detector:
    """`members`: comma-separated registered names, each optionally `name=WEIGHTS`; other keywords (runtime,
    calibrate) go to every member."""
    if weights is not None:
        raise ValueError("the ensemble takes no weights file; give each member its own: members='npr=PATH,bts=PATH'")
    built = [create_detector(name, weights=path, device=device, input_size=input_size, **kw)
             for name, path in parse_members(members)]
    return EnsembleDetector(built, combine=combine, device=device, input_size=input_size)
