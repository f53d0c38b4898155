"""The adversarial game of "Deepfake Forensics via An Adversarial Game" (Wang, Guo, Zuo, TIP 2022), for any detector.

A small encoder-decoder (the adversary) looks at an image and outputs a per-pixel sharpness s >= 1; every pixel is
then replaced by a Gaussian-weighted mean of its (radius x radius) window, with weights exp(-|d|^2 / 2 * s) over the
offsets d, normalised to sum to one. s = 1 is the strongest blur the window allows; s -> infinity is exactly the
identity (the off-centre weights underflow to 0 at the clamp's top, 1e12). One adversary blurs real images and one
blurs fakes, as in the seed. Per training step:

  1. the detector is frozen (eval mode); each adversary takes `g_per_d` Adam/RAdam steps *raising* the detector's
     loss on its blurred copies (it learns where blurring hides the traces the detector relies on);
  2. the detector trains on the originals and the blurred copies together, with their true labels.

`--gen_train_type pert` swaps the learned blur for the seed's other baseline, a one-step L2 gradient attack;
`--aug_blur` is the control: the same doubled batch, but blurred with a random sharpness map instead of a learned
one (does the game beat plain blur augmentation?).

Blurring a normalised tensor equals normalising a blurred image (the kernel is convex, normalisation is affine per
channel), so the game runs on the batches train.py already builds.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

SHARPNESS_MAX = 1e12  # exp(-1e12 / 2) == 0.0 in float32: the blur is exactly the identity there


def pixel_gaussian_blur(x: torch.Tensor, sharpness: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Blur each pixel of x (B,C,H,W) with its own Gaussian kernel over a radius x radius window (radius odd).

    sharpness (B,1,H,W) >= 1 is the inverse variance at each pixel: weights exp(-|d|^2 / 2 * s), normalised.
    Differentiable in both x and s; reflect padding at the borders, as in the seed.
    """
    if radius < 1 or radius % 2 == 0:
        raise ValueError(f"radius must be an odd window side >= 1 (got {radius})")
    b, c, h, w = x.shape
    if sharpness.shape != (b, 1, h, w):
        raise ValueError(f"sharpness must be {(b, 1, h, w)}, got {tuple(sharpness.shape)}")
    half = radius // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    dist2 = (offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2).reshape(1, -1, 1, 1)  # (1, r*r, 1, 1)
    weights = torch.softmax(-0.5 * dist2 * sharpness.to(x.dtype), dim=1)  # (B, r*r, H, W), convex per pixel
    padded = F.pad(x, (half, half, half, half), mode="reflect") if half else x
    windows = F.unfold(padded, radius).view(b, c, radius * radius, h, w)  # window offsets in the same order
    return (windows * weights.unsqueeze(1)).sum(2)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.BatchNorm2d(ch), nn.ReLU(True),
                                  nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.BatchNorm2d(ch))

    def forward(self, x):
        return x + self.body(x)


class BlurAdversary(nn.Module):
    """The seed's PixelKernelGenerator, sized by `ngf` and `blocks` (seed: 64 and 3; CPU default 8 and 1).

    ReflPad3-Conv7 -> 2 x stride-2 convs -> residual blocks -> 2 x stride-2 transposed convs -> ReflPad3-Conv7 -> one
    channel m; sharpness s = clamp(m^2, 1, 1e12). Input sides must be multiples of 4.
    """

    def __init__(self, ngf: int = 8, blocks: int = 1, radius: int = 3):
        super().__init__()
        self.radius = radius
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.BatchNorm2d(ngf), nn.ReLU(True)]
        for mult in (1, 2):  # down: ngf -> 2 ngf -> 4 ngf
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 2, 1), nn.BatchNorm2d(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResBlock(ngf * 4) for _ in range(blocks)]
        for mult in (4, 2):  # up: 4 ngf -> 2 ngf -> ngf
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, 2, 1, output_padding=1),
                       nn.BatchNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 1, 7)]
        self.net = nn.Sequential(*layers)

    def sharpness(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"the adversary needs sides that are multiples of 4 (got {tuple(x.shape[-2:])})")
        return self.net(x).float().square().clamp(1.0, SHARPNESS_MAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_gaussian_blur(x, self.sharpness(x), self.radius)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """train.py's options for this mode (the seed's names)."""
    g = p.add_argument_group("adversarial game (base_miner/adversarial.py)")
    g.add_argument("--adversarial", action="store_true",
                   help="train against a learned per-pixel blur adversary (one for reals, one for fakes)")
    g.add_argument("--g_per_d", type=int, default=3, help="adversary steps per detector step (seed: 3)")
    g.add_argument("--gen_lr", type=float, default=2e-3, help="adversary learning rate (seed: 2e-3)")
    g.add_argument("--radius", type=int, default=3, help="blur window side, odd (seed: 3)")
    g.add_argument("--gen_train_type", default="blur", choices=("blur", "pert"),
                   help="blur: the learned blur adversary; pert: the seed's one-step L2 gradient attack")
    g.add_argument("--gen_ngf", type=int, default=8, help="adversary width (seed: 64)")
    g.add_argument("--gen_blocks", type=int, default=1, help="adversary residual blocks (seed: 3)")
    g.add_argument("--pert_eps", type=float, default=1.0,
                   help="pert: L2 norm of the attack per image, in normalised pixel units")
    g.add_argument("--aug_blur", action="store_true",
                   help="control: the same doubled batch, blurred with a random sharpness map, no adversary")


def check_arguments(p: argparse.ArgumentParser, args) -> None:
    if args.adversarial and args.aug_blur:
        p.error("--adversarial and --aug_blur are alternatives (the second is the first's control)")
    if args.g_per_d < 1 or args.gen_ngf < 1 or args.gen_blocks < 0:
        p.error("--g_per_d and --gen_ngf must be >= 1, --gen_blocks >= 0")
    if args.radius < 1 or args.radius % 2 == 0:
        p.error("--radius must be an odd window side >= 1")
    if not args.gen_lr > 0 or not args.pert_eps > 0:
        p.error("--gen_lr and --pert_eps must be > 0")
    if (args.adversarial or args.aug_blur) and args.crop_size % 4:
        p.error("--crop_size must be a multiple of 4 for the blur adversary")


def random_sharpness(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """--aug_blur: per image, a smooth random sharpness map between strong blur (1) and almost none (~100)."""
    b, _, h, w = x.shape
    coarse = torch.rand(b, 1, max(h // 32, 1), max(w // 32, 1), generator=generator).to(x.device)
    log_s = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False) * 4.6  # e^4.6 ~ 100
    return log_s.exp()


class AdversarialGame:
    """Owns the two adversaries and their optimisers; `detector_step_inputs` returns what the detector trains on.

    `detector` is the unwrapped nn.Module (frozen during the adversary's steps, so no DDP gradient sync is needed
    for it there); adversaries are wrapped for DDP by the caller's `wrap` so their gradients are averaged.
    """

    def __init__(self, args, device: torch.device, wrap=lambda m: m):
        self.args = args
        self.enabled = args.adversarial or args.aug_blur
        self.learned = args.adversarial and args.gen_train_type == "blur"
        self.generator = torch.Generator().manual_seed(args.seed + 1)
        self.adversaries, self.optimizers, self.modules = {}, {}, {}
        if self.learned:
            for label in (0, 1):  # 0 = real, 1 = fake (the project's labels)
                net = BlurAdversary(args.gen_ngf, args.gen_blocks, args.radius).to(device)
                self.modules[label] = net
                self.adversaries[label] = wrap(net)
                # the seed: RAdam, weight decay 5e-4
                self.optimizers[label] = torch.optim.RAdam(net.parameters(), lr=args.gen_lr, weight_decay=5e-4)
        self.last_adv_loss = float("nan")

    def _blur(self, label: int, x: torch.Tensor) -> torch.Tensor:
        return self.adversaries[label](x)

    def _train_adversaries(self, detector: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> None:
        was_training = detector.training
        detector.eval()
        frozen = [p for p in detector.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            for _ in range(self.args.g_per_d):
                losses = []
                for label, opt in self.optimizers.items():
                    idx = (y == label).nonzero().flatten()
                    if idx.numel() == 0:
                        continue
                    xs = x[idx]
                    loss = -loss_fn(detector(self._blur(label, xs)), y[idx])  # raise the detector's loss
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    losses.append(-loss.item())
                self.last_adv_loss = sum(losses) / max(len(losses), 1)
        finally:
            for p in frozen:
                p.requires_grad_(True)
            detector.train(was_training)

    def _perturb(self, detector: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
        """The seed's `pert` baseline: one L2-normalised gradient step that raises the detector's loss."""
        was_training = detector.training
        detector.eval()
        x_adv = x.detach().clone().requires_grad_(True)
        loss = loss_fn(detector(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        detector.train(was_training)
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        self.last_adv_loss = loss.item()
        return (x + self.args.pert_eps * grad / norm).detach()

    def adversarial_copies(self, detector: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
        if self.learned:
            self._train_adversaries(detector, x, y, loss_fn)
            out = torch.empty_like(x)
            with torch.no_grad():
                for label in (0, 1):
                    idx = (y == label).nonzero().flatten()
                    if idx.numel():
                        out[idx] = self._blur(label, x[idx])
            return out.contiguous(memory_format=torch.channels_last)
        if self.args.adversarial:  # pert
            return self._perturb(detector, x, y, loss_fn)
        with torch.no_grad():  # aug_blur control
            return pixel_gaussian_blur(x, random_sharpness(x, self.generator), self.args.radius) \
                .contiguous(memory_format=torch.channels_last)

    def detector_step_inputs(self, detector: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn):
        """(inputs, labels) for the detector's step: the batch itself, or originals + adversarial copies."""
        if not self.enabled:
            return x, y
        return torch.cat([x, self.adversarial_copies(detector, x, y, loss_fn)]), torch.cat([y, y])

    def state_dict(self) -> dict:
        return {"modules": {k: m.state_dict() for k, m in self.modules.items()},
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
            self.optimizers[k].load_state_dict(state["optimizers"][k])
        self.generator.set_state(state["generator"])
