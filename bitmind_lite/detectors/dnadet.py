"""DNA-Det: Deepfake Network Architecture attribution (Yang et al., AAAI 2022), as a detector plugin.

Attribution names the generator *architecture* (all Real-CUGAN models are one class, whatever their weights) from
traces that are the same in every patch of an image, so the net is a small plain CNN trained on 64x64 patches
(base_miner/train_dnadet.py) and applied to the whole image at test time (global average pooling):

    x                          B x 3 x H x W     ImageNet-normalised, as every detector here (the paper: mean=std=.5)
    4 x [dcgan_conv, vgg_layer]                  dcgan_conv: Conv 4x4 s2 p1 -> BN -> LeakyReLU(0.2)   (halves H, W)
                                                 vgg_layer:  Conv 3x3 s1 p1 -> BN -> LeakyReLU(0.2)
        stage i (i = 0..3)     B x nf*2^i x H/2^(i+1) x W/2^(i+1)
    GAP -> feature f           B x 8nf
    Dropout(0.2) -> Linear     B x C logits      (no softmax inside: the reference's double softmax is not copied)
    head(f), training only     B x 128           Linear(8nf, 8nf) -> ReLU -> Linear(8nf, 128), L2-normalised (SupCon)

Parameters, backbone + classifier (+ head): nf=64, C=5: 5,897,349 (+328,320), the reference's 5.90 M;
nf=16, C=15: 372,015 (+33,024), the bundled CPU model (weights/dnadet.md). tests/test_dnadet.py checks both.

Class 0 is always "real": P(AI) = 1 - softmax(logits)[0] = sigmoid(logsumexp(logits[1:]) - logits[0]), so the
binary logit is what a calibration sidecar (checkpoint.Calibration) scales. The attribution sent with each answer
is the most likely *generator* class (argmax over classes 1..C-1) and every class's probability.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bitmind_lite.detectors.base import Detector, TorchDetector
from bitmind_lite.detectors.checkpoint import CheckpointError, default_weights, load_state_dict
from bitmind_lite.detectors.registry import register_detector

REAL = "real"
# The classes of the bundled model, in label order: real, then one per generator architecture of the offline zoo
# (bitmind_lite/data/families.py). base_miner/train_dnadet.py trains on these unless told otherwise.
DEFAULT_CLASSES = (REAL, "nearest", "bilinear", "bicubic", "transposed", "pixelshuffle",
                   "realcugan", "waifu2x_cunet", "waifu2x_upconv7", "srmd", "span",
                   "house_gan_deconv", "house_gan_pixelshuffle", "house_vae", "house_ddpm")
DEFAULT_NF = 16  # 64 is the paper's width; 16 trains in minutes on a CPU
EMBED_DIM = 128


def dcgan_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


def vgg_layer(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


class DNANet(nn.Module):
    """The reference `Simple_CNN` (+ the `SupConNet` projection head). forward() returns logits."""

    def __init__(self, num_classes: int, nf: int = 64, dropout: float = 0.2, embed_dim: int = EMBED_DIM):
        super().__init__()
        layers, cin = [], 3
        for width in (nf, 2 * nf, 4 * nf, 8 * nf):
            layers += [dcgan_conv(cin, width), vgg_layer(width, width)]
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes)
        self.head = nn.Sequential(nn.Linear(cin, cin), nn.ReLU(inplace=True), nn.Linear(cin, embed_dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W -> B x 8nf pooled features (any H, W >= 16)."""
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.embed(x)))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits B x C, L2-normalised projections B x 128) for CE + SupCon."""
        f = self.embed(x)
        return self.fc(self.dropout(f)), F.normalize(self.head(f), dim=1)


def ai_logit(logits: torch.Tensor) -> torch.Tensor:
    """B x C class logits -> B binary logits with sigmoid = 1 - P(real) (class 0)."""
    return torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]


def attributions(probs: torch.Tensor, classes: tuple[str, ...]) -> list[dict]:
    """One `protocol.Attribution`-shaped dict per row of B x C softmax probabilities."""
    out = []
    for row in probs.tolist():
        best = max(range(1, len(classes)), key=row.__getitem__)
        out.append({"label": classes[best], "probs": {c: round(p, 4) for c, p in zip(classes, row)}})
    return out


# ---------------------------------------------------------------- checkpoints
def meta_path(weights: str | os.PathLike) -> Path:
    """The training script's sidecar (base_miner/train.py save_weights: dnadet.pth -> dnadet.meta.json)."""
    return Path(weights).with_suffix(".meta.json")


def checkpoint_spec(weights: str | os.PathLike) -> tuple[int, int, tuple[str, ...]]:
    """(nf, embed_dim, class names) of a checkpoint: widths from its tensors, names from its sidecar (else the
    default names when the count matches, else generic ones; class 0 is real either way)."""
    state = load_state_dict(weights)
    try:
        nf, n_classes = state["features.0.0.weight"].shape[0], state["fc.weight"].shape[0]
        embed_dim = state["head.2.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"weights {weights} is not a DNA-Det checkpoint (no tensor {e}): was it trained for "
                              f"another detector?") from None
    classes = None
    if meta_path(weights).is_file():
        try:
            classes = tuple(json.loads(meta_path(weights).read_text())["classes"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{meta_path(weights)}: no class list ({e}); fix or delete it") from None
    if classes is None or len(classes) != n_classes:
        classes = DEFAULT_CLASSES if len(DEFAULT_CLASSES) == n_classes else \
            (REAL, *(f"class{i}" for i in range(1, n_classes)))
    if n_classes < 2 or classes[0] != REAL:
        raise CheckpointError(f"weights {weights}: class 0 must be {REAL!r} and there must be a generator class "
                              f"(got {list(classes)})")
    return int(nf), int(embed_dim), classes


class DNADetector(TorchDetector):
    """P(AI) = 1 - P(real), and the architecture attribution with it."""

    name = "dnadet"

    def __init__(self, weights=None, device="auto", nf: int = DEFAULT_NF, pretrained: bool = True, **kw):
        nf, embed_dim, self.classes = checkpoint_spec(weights) if weights and pretrained else \
            (nf, EMBED_DIM, DEFAULT_CLASSES)
        super().__init__(self._builder(nf, embed_dim, self.classes), weights, device, pretrained=pretrained, **kw)

    @staticmethod
    def _builder(nf: int, embed_dim: int, classes: tuple[str, ...]):
        return lambda: DNANet(len(classes), nf=nf, embed_dim=embed_dim)

    def _class_logits(self, batch: torch.Tensor):
        model, cal = self._serving
        with torch.inference_mode():
            return model(batch.to(self.device, non_blocking=True)).float().cpu(), cal

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        return ai_logit(self._class_logits(batch)[0])

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        return self.predict_with_attribution(batch)[0]

    def predict_with_attribution(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        logits, cal = self._class_logits(batch)
        binary = ai_logit(logits)
        p_ai = torch.sigmoid(cal.apply(binary) if cal is not None else binary)
        return p_ai, attributions(torch.softmax(logits, dim=1), self.classes)

    def reload(self, weights: str | os.PathLike) -> None:
        """A retrained checkpoint may have other widths or classes: rebuild for it (the miner reloads between
        batches, on its model thread, so no batch sees the new names with the old model)."""
        nf, embed_dim, classes = checkpoint_spec(weights)
        old = self._build
        self._build = self._builder(nf, embed_dim, classes)
        try:
            super().reload(weights)
        except Exception:
            self._build = old
            raise
        self.classes = classes


@register_detector("dnadet")
def dnadet(weights=None, device="auto", **kw) -> Detector:
    """DNA-Det architecture attribution; P(AI) = 1 - P(real). Bundled weights: weights/dnadet.pth."""
    return DNADetector(weights or default_weights("dnadet"), device, **kw)
