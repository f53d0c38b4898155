"""NPR: Neighboring Pixel Relationships (Tan et al., CVPR 2024), as the reference code defines it.

Generators up-sample. Nearest/bilinear/transposed-conv up-sampling leaves fixed relationships between the four
pixels of each 2x2 block. NPR exposes them by subtracting the image's own nearest-neighbour re-up-sampling:

    npr = x - up_nearest(down_nearest(x, 0.5), 2)      (x ImageNet-normalised, H and W even)

Inside every 2x2 block this is (0, w2 - w1, w3 - w1, w4 - w1). The net is a ResNet-50 cut after layer2
(3x3 stride-2 stem, 3 + 4 Bottlenecks, GAP, one logit) trained from scratch; 1,437,761 parameters.
State-dict keys match the reference checkpoint (`conv1, bn1, layer1.*, layer2.*, fc1.*`) so `NPR.pth` loads
with strict=True.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

NPR_SCALE = 2.0 / 3.0  # the reference multiplies the residual by 2/3 before conv1 (easy to miss)


def crop_to_even(x: torch.Tensor) -> torch.Tensor:
    """Drop the last row/column of odd-sized inputs: 255 -> 127 -> 254 would not line up (reference README)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % 2, : w - w % 2]


def npr_residual(x: torch.Tensor) -> torch.Tensor:
    """x - up_nearest(down_nearest(x)), exactly as the reference computes it, on an even-sized crop of x."""
    x = crop_to_even(x)
    down = F.interpolate(x, scale_factor=0.5, mode="nearest", recompute_scale_factor=True)
    return x - F.interpolate(down, scale_factor=2.0, mode="nearest", recompute_scale_factor=True)


class Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (1x1 -> 3x3 (stride) -> 1x1, expansion 4), same attribute names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class NPRNet(nn.Module):
    """The NPR detector network. `use_npr=False` gives the `npr_raw` baseline: same net, raw pixels in."""

    def __init__(self, use_npr: bool = True):
        super().__init__()
        self.use_npr = use_npr
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, blocks=3)
        self.layer2 = self._make_layer(128, blocks=4, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(512, 1)
        for m in self.modules():  # the reference init: kaiming fan_out for convs, BN at identity
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: Bx3xHxW ImageNet-normalised. Returns B logits; sigmoid(logit) = P(AI-generated)."""
        x = npr_residual(x) * NPR_SCALE if self.use_npr else crop_to_even(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc1(torch.flatten(self.avgpool(x), 1)).squeeze(1)
