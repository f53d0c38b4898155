"""Beyond the Spectrum (He, Yu, Keuper, Fritz, IJCAI 2021): detect fakes by how badly they re-synthesize.

A super-resolution network trained on *real photos only* learns what real pixels look like at the fine scale:

    lr  = box_downscale(x, s)             (the mean of each s x s block: avg_pool2d with kernel s)
    err = |RDN(lr) - x|                   ("pixel" feature, 3 channels at full resolution)
    p   = sigmoid(classifier(err))        (one logit, P(AI-generated), like every TorchDetector)

A generator's pixels are not what the SR model learnt to predict, so their error map differs from a real photo's;
the classifier reads that map. The "stage5" variant compares VGG19 relu5_1 features of RDN(lr) and x instead; it
needs ImageNet VGG weights (`vgg_weights=PATH`), which are not available offline, so it is off by default.

Sizes are configurable (`BTSConfig`); the paper's RDN is G0=64, G=64, D=16, C=8, x4 (1.5 TMACs at 1024 px), the
default here is sized for a CPU miner: 1.1 GMACs for SR + classifier at 256 px (NPR: 2.2). Inputs are [0, 1] RGB
(no ImageNet normalisation, as the reference). A side not divisible by the scale is cropped, never resized.

The config travels inside the checkpoint (the `arch` buffer), so `create_detector("bts", weights=PATH)` rebuilds
whatever network was trained.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from bitmind_lite.detectors.base import DEFAULT_INPUT_SIZE, Detector, TorchDetector, crop_or_tile
from bitmind_lite.detectors.checkpoint import CheckpointError, default_weights, load_state_dict
from bitmind_lite.detectors.registry import register_detector

FEATURES = ("pixel", "stage5")
VGG_RELU5_1 = 30  # torchvision vgg19().features[:30] ends at relu5_1 (the seed's last slice)
# |RDN(lr) - x| in units of 8 gray levels: a real photo's error is a few gray levels, so the classifier's BatchNorm
# sees inputs near unit scale and its running statistics (initialised at variance 1) are right after a few steps
# instead of a few hundred (with raw [0, 1] errors, a short run evaluated far off its training behaviour).
PIXEL_ERROR_SCALE = 255 / 8


@dataclass(frozen=True)
class BTSConfig:
    g0: int = 16  # RDN feature width
    g: int = 16  # growth rate of each dense layer
    d: int = 3  # residual dense blocks
    c: int = 3  # dense layers per block
    scale: int = 2  # SR factor (2, 3 or 4)
    skip: int = 1  # 1: RDN predicts a residual over bilinear up-sampling (trains in minutes on a CPU); 0: paper
    feature: str = "pixel"
    width: int = 24  # classifier stem width; stages double it
    blocks: int = 1  # BasicBlocks per classifier stage (3 stages)

    def __post_init__(self):
        if self.scale not in (2, 3, 4):
            raise ValueError(f"BTS scale must be 2, 3 or 4, got {self.scale}")
        if self.feature not in FEATURES:
            raise ValueError(f"BTS feature must be one of {', '.join(FEATURES)}, got {self.feature!r}")
        if min(self.g0, self.g, self.d, self.c, self.width, self.blocks) < 1:
            raise ValueError(f"BTS sizes must be >= 1: {self}")

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor([FEATURES.index(v) if f.name == "feature" else int(v)
                             for f, v in zip(fields(self), asdict(self).values())], dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> BTSConfig:
        values = t.tolist()
        if len(values) != len(fields(cls)):
            raise ValueError(f"arch buffer has {len(values)} values, expected {len(fields(cls))}")
        kw = {f.name: (FEATURES[v] if f.name == "feature" else v) for f, v in zip(fields(cls), values)}
        return cls(**kw)


# ------------------------------------------------------------------ the re-synthesis input
def crop_to_multiple(x: torch.Tensor, s: int) -> torch.Tensor:
    """Drop trailing rows/columns so both sides divide by s (the LR grid and the xs output must match x)."""
    h, w = x.shape[-2:]
    if h < s or w < s:
        raise ValueError(f"image {h}x{w} is smaller than the BTS scale {s}")
    return x[..., : h - h % s, : w - w % s]


def box_downscale(x: torch.Tensor, s: int) -> torch.Tensor:
    """The reference's LR: the mean of the s*s strided sub-grids x[..., i::s, j::s] (= avg_pool2d(x, s))."""
    x = crop_to_multiple(x, s)
    return sum(x[..., i::s, j::s] for i in range(s) for j in range(s)) / (s * s)


def corrupt_lr(lr: torch.Tensor, gen: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """The auxiliary tasks: with probability p per image, Gaussian noise sigma 4/255 (denoising) or 10-25% of pixels
    replaced by their gray (colorization), half each. The SR model then learns to undo them on real photos."""
    b, _, h, w = lr.shape
    draw = torch.rand(b, 3, generator=gen).to(lr.device)
    out = lr.clone()
    noisy = (draw[:, 0] < p) & (draw[:, 1] < 0.5)
    gray = (draw[:, 0] < p) & (draw[:, 1] >= 0.5)
    if noisy.any():
        noise = torch.randn(lr.shape, generator=gen).to(lr.device) * (4 / 255)
        out[noisy] = (lr[noisy] + noise[noisy]).clamp(0, 1)
    if gray.any():
        share = (0.10 + 0.15 * draw[:, 2]).view(b, 1, 1, 1)  # 10-25% of the pixels
        mask = (torch.rand(b, 1, h, w, generator=gen).to(lr.device) < share) & gray.view(b, 1, 1, 1)
        out = torch.where(mask, out.mean(1, keepdim=True).expand_as(out), out)
    return out


# ------------------------------------------------------------------ RDN (Zhang et al. 2018), the reference layout
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, growth, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, F.relu(self.conv(x))], 1)


class RDB(nn.Module):
    """Residual dense block: C densely connected layers, a 1x1 local feature fusion, a local residual."""

    def __init__(self, g0: int, g: int, c: int):
        super().__init__()
        self.convs = nn.Sequential(*[DenseLayer(g0 + i * g, g) for i in range(c)])
        self.lff = nn.Conv2d(g0 + c * g, g0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lff(self.convs(x)) + x


class RDN(nn.Module):
    """Shallow features -> D RDBs -> global feature fusion (+ global residual) -> PixelShuffle up-sampler."""

    def __init__(self, cfg: BTSConfig):
        super().__init__()
        g0, g, s = cfg.g0, cfg.g, cfg.scale
        self.scale, self.skip = s, bool(cfg.skip)
        self.sfe1 = nn.Conv2d(3, g0, 3, padding=1)
        self.sfe2 = nn.Conv2d(g0, g0, 3, padding=1)
        self.rdbs = nn.ModuleList(RDB(g0, g, cfg.c) for _ in range(cfg.d))
        self.gff = nn.Sequential(nn.Conv2d(cfg.d * g0, g0, 1), nn.Conv2d(g0, g0, 3, padding=1))
        steps = [2, 2] if s == 4 else [s]  # x4 = two x2 stages, as the reference
        up: list[nn.Module] = []
        cin = g0
        for r in steps:
            up += [nn.Conv2d(cin, g * r * r, 3, padding=1), nn.PixelShuffle(r)]
            cin = g
        self.up = nn.Sequential(*up, nn.Conv2d(g, 3, 3, padding=1))
        if self.skip:  # start as plain bilinear up-sampling: training can only improve on it
            nn.init.zeros_(self.up[-1].weight)
            nn.init.zeros_(self.up[-1].bias)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        f1 = self.sfe1(lr)
        x = self.sfe2(f1)
        local = []
        for block in self.rdbs:
            x = block(x)
            local.append(x)
        x = self.up(self.gff(torch.cat(local, 1)) + f1)
        if self.skip:  # why: the net then only learns the detail bilinear misses, minutes instead of days on a CPU
            x = x + F.interpolate(lr, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return x


# ------------------------------------------------------------------ the classifier on the error map
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)))


class ErrorClassifier(nn.Module):
    """The reference's ResNet shape, small: deep 3x3 stem (stride 4 for pixel maps, 1 for the H/16 stage5 map),
    three stages of BasicBlocks (width x1, x2, x4; strides 1, 2, 2), global average pooling, one logit."""

    def __init__(self, cin: int, width: int, blocks: int, stem_stride: int):
        super().__init__()
        s = 2 if stem_stride > 1 else 1
        self.stem = nn.Sequential(
            nn.Conv2d(cin, width, 3, s, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, s, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, c = [], width
        for i, mult in enumerate((1, 2, 4)):
            for j in range(blocks):
                layers.append(BasicBlock(c, width * mult, stride=2 if i and not j else 1))
                c = width * mult
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)).squeeze(1)


def vgg19_relu5_1(weights: str | os.PathLike | None) -> nn.Sequential:
    """torchvision's VGG19 up to relu5_1, frozen. `weights`: a torchvision vgg19 state_dict file (offline), or None
    for random weights (tests; a stage5 checkpoint carries its VGG weights anyway)."""
    from torchvision.models import vgg19

    vgg = vgg19(weights=None)
    if weights is not None:
        state = load_state_dict(weights)
        try:
            vgg.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{weights} is not a torchvision vgg19 state_dict: {str(e)[:200]}") from None
    features = vgg.features[:VGG_RELU5_1]
    for p in features.parameters():
        p.requires_grad_(False)
    return features.eval()


class BTSNet(nn.Module):
    """SR + (VGG) + classifier in one module: input Bx3xHxW in [0, 1], output B logits (sigmoid = P(AI))."""

    def __init__(self, cfg: BTSConfig = BTSConfig(), vgg_weights: str | os.PathLike | None = None):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("arch", cfg.to_tensor())  # the checkpoint says which network it is
        self.sr = RDN(cfg)
        self.vgg = vgg19_relu5_1(vgg_weights) if cfg.feature == "stage5" else None
        pixel = cfg.feature == "pixel"
        self.cls = ErrorClassifier(3 if pixel else 512, cfg.width, cfg.blocks, stem_stride=4 if pixel else 1)

    def train(self, mode: bool = True) -> BTSNet:
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()  # a fixed feature extractor, whatever the phase
        return self

    def resynthesize(self, x: torch.Tensor, corrupt=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x cropped to a multiple of the scale, RDN(box_downscale(x))); `corrupt` alters the LR (aux tasks)."""
        x = crop_to_multiple(x, self.cfg.scale)
        lr = box_downscale(x, self.cfg.scale)
        return x, self.sr(corrupt(lr) if corrupt is not None else lr)

    def error(self, x: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        if self.vgg is None:
            return (sr - x).abs() * PIXEL_ERROR_SCALE
        return (self.vgg(sr) - self.vgg(x)).abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, sr = self.resynthesize(x)
        return self.cls(self.error(x, sr))


# ------------------------------------------------------------------ the detector plugin
def to_unit_tensor(img: Image.Image) -> torch.Tensor:
    """HxWx3 uint8 PIL -> 3xHxW float32 in [0, 1] (in numpy: see base.to_normalized_tensor for why)."""
    arr = np.asarray(img, dtype=np.uint8).astype(np.float32) * np.float32(1 / 255)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def checkpoint_config(weights: str | os.PathLike) -> BTSConfig:
    """The config a BTS checkpoint was trained with (its `arch` buffer)."""
    state = load_state_dict(weights)
    if "arch" not in state:
        raise CheckpointError(f"weights {weights} has no 'arch' entry: not a BTS checkpoint (was it trained for "
                              f"another detector?)")
    try:
        return BTSConfig.from_tensor(state["arch"])
    except (ValueError, IndexError) as e:
        raise CheckpointError(f"weights {weights}: bad BTS arch entry ({e})") from None


class BTSDetector(TorchDetector):
    name = "bts"
    # base_miner/train.py is NPR's one-stage recipe on ImageNet-normalised pixels; BTS trains in stages on [0, 1]
    # pixels with base_miner/train_bts.py, so train.py refuses it rather than training it wrong
    trainable = False

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        # the shared native-pixel crop/tile, then [0, 1]: the SR model and VGG were fed unnormalised pixels
        return to_unit_tensor(crop_or_tile(img, self.input_size))

    def reload(self, weights: str | os.PathLike) -> None:
        """Hot-swap, rebuilding the network from the new checkpoint's own config (it may differ in size)."""
        old = self._build
        self._build = lambda: BTSNet(checkpoint_config(weights))
        try:
            super().reload(weights)
        except Exception:
            self._build = old
            raise


@register_detector("bts")
def bts(weights=None, device="auto", input_size: int = DEFAULT_INPUT_SIZE, pretrained: bool = True,
        vgg_weights=None, **kw) -> Detector:
    """BTS. With weights: the network the checkpoint describes. Without (pretrained=False, the trainer): a fresh
    network from BTSConfig fields passed as keywords (g0, g, d, c, scale, skip, feature, width, blocks)."""
    names = {f.name for f in fields(BTSConfig)}
    arch = {k: kw.pop(k) for k in list(kw) if k in names}
    weights = weights or (default_weights("bts") if pretrained else None)
    if weights is not None and pretrained:
        cfg = checkpoint_config(weights)
        if arch and BTSConfig(**{**asdict(cfg), **arch}) != cfg:
            raise ValueError(f"BTS arch {arch} differs from the checkpoint's {asdict(cfg)}")
    else:
        cfg = BTSConfig(**arch)
    if cfg.feature == "stage5" and vgg_weights is None and not (weights and pretrained):
        raise ValueError("BTS feature 'stage5' needs vgg_weights=PATH (a torchvision vgg19 state_dict file)")
    return BTSDetector(lambda: BTSNet(cfg, vgg_weights), weights, device, input_size=input_size,
                       pretrained=pretrained, **kw)
