"""A tiny generated dataset in the CNNDetection layout, for tests and for benchmarks when no built dataset exists.

real = smooth random scenes with sensor-like per-pixel noise; fake = the same kind of scene, 2x down-sampled and
nearest up-sampled (the trace NPR reads), with the noise added before the re-rendering. Made with PIL + numpy only,
in well under a second for a few dozen images.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def toy_image(rng: np.random.Generator, size: int, fake: bool) -> Image.Image:
    low = rng.random((max(2, size // 16), max(2, size // 16), 3)) * 255
    scene = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BICUBIC), dtype=np.float32)
    scene = scene + rng.normal(0, 6, scene.shape)
    if fake:
        half = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8)).resize((size // 2, size // 2), Image.BOX)
        scene = np.asarray(half.resize((size, size), Image.NEAREST), dtype=np.float32)
    return Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8))


def make_toy_dataset(root: str | os.PathLike, n_per_class: int = 8, size: int = 64, seed: int = 0,
                     classes: tuple[str, ...] = ("toy",), splits: tuple[str, ...] = ("train", "val")) -> Path:
    """Write root/<split>/<class>/{0_real,1_fake}/NNNN.png and return root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in splits:
        for cls in classes:
            for label, folder in ((0, "0_real"), (1, "1_fake")):
                out = root / split / cls / folder
                out.mkdir(parents=True, exist_ok=True)
                for i in range(n_per_class):
                    toy_image(rng, size, fake=bool(label)).save(out / f"{i:04d}.png")
    return root


def toy_checkpoint(path: str | os.PathLike, seed: int = 0, arch_npr: bool = True) -> Path:
    """An untrained NPRNet state_dict whose BatchNorm statistics come from random inputs, so that its logits are
    well scaled (a fresh network's unit running variances blow activations up): a stand-in checkpoint for tests."""
    import torch

    from bitmind_lite.detectors.npr import NPRNet

    torch.manual_seed(seed)
    net = NPRNet(use_npr=arch_npr)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the warm-up batches
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(4, 3, 48, 48))
    torch.save(net.state_dict(), path)
    return Path(path)
