"""Train the project's own "house" generators (bitmind_lite/data/house.py) on the bundled real photos, on CPU.

    python -m base_miner.train_generators --family house_vae --out weights/generators --minutes 10
    python -m base_miner.train_generators --family all --minutes 12 --threads 1        # the four, one after another
    python -m base_miner.train_generators --family house_ddpm --resume                  # continue from the checkpoint

Objectives (all on random --crop px crops of the photos, random flips, images in [-1, 1]):
    house_gan_*   L1 reconstruction + --adv x hinge loss of a small spectral-norm PatchGAN discriminator
    house_vae     L1 reconstruction + --kl x KL(posterior || N(0, 1)) (summed over the latent, as SD's VAE)
    house_ddpm    noise-prediction MSE at t ~ U[0, house.TRAIN_T_MAX) of the DDPM schedule (img2img never goes higher)

Training stops after --minutes of training time or --steps steps, whichever comes first (0 = no limit), counted over
resumes. Every --ckpt-minutes a full checkpoint (fp32 model, optimiser, discriminator) goes to
OUT/checkpoints/<family>.ckpt (git-ignored); at the end the fp16 weights go atomically to OUT/<family>.pt together
with the architecture and this run's record, and OUT/<family>.png shows real windows (top row), their generated
twins (middle) and a 4x nearest zoom of the twins' centres (bottom). Data and torch noise are seeded per step from
--seed, so a resumed run draws the same batches it would have drawn without the interruption.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from bitmind_lite.data import house
from bitmind_lite.data.photo import ensure_min_size, random_box
from bitmind_lite.data.real import open_real_source

DEFAULT_LR = {"house_gan_deconv": 2e-4, "house_gan_pixelshuffle": 2e-4, "house_vae": 1e-3, "house_ddpm": 5e-4}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m base_miner.train_generators", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", required=True, choices=[*house.FAMILIES, "all"])
    p.add_argument("--out", default=str(house.WEIGHTS_DIR), help="where <family>.pt / .png (and checkpoints/) go")
    p.add_argument("--real", default="bundled", help="real photo source spec (bitmind_lite.data.real)")
    p.add_argument("--photos", type=int, default=0, help="use only the first N photos (0 = all; for smoke tests)")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget per family (0 = no limit)")
    p.add_argument("--steps", type=int, default=0, help="step budget per family (0 = no limit)")
    p.add_argument("--crop", type=int, default=64, help="training crop side, a multiple of 4")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=None, help=f"default per family: {DEFAULT_LR}")
    p.add_argument("--adv", type=float, default=0.05, help="GAN families: weight of the adversarial loss")
    p.add_argument("--kl", type=float, default=1e-6, help="house_vae: weight of the (summed) KL term")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-minutes", type=float, default=2.0, help="checkpoint every this many minutes")
    p.add_argument("--log-every", type=int, default=25, help="print losses every this many steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/<family>.ckpt")
    return p


# ---------------------------------------------------------------- data


def load_photos(spec: str, limit: int, min_side: int) -> list:
    """The photos of a real source as Photo objects (tiled up to min_side when smaller, never resized)."""
    src = open_real_source(spec)
    ids = src.ids()[:limit] if limit else src.ids()
    photos = [p for p in (src.photo(i) for i in ids) if p is not None]
    for p in photos:
        p.image = ensure_min_size(p.image, min_side)
    return photos


def photo_tensors(photos) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(p.image, dtype=np.uint8).copy()).permute(2, 0, 1) for p in photos]


def sample_batch(images: list[torch.Tensor], rng: np.random.Generator, batch: int, crop: int) -> torch.Tensor:
    """batch random crop x crop windows (any offset: generators must work on every phase), random h-flips, [-1, 1]."""
    out = []
    for _ in range(batch):
        img = images[int(rng.integers(len(images)))]
        y, x = int(rng.integers(img.shape[1] - crop + 1)), int(rng.integers(img.shape[2] - crop + 1))
        win = img[:, y:y + crop, x:x + crop]
        out.append(win.flip(-1) if rng.random() < 0.5 else win)
    return torch.stack(out).float().div_(127.5).sub_(1.0)


# ---------------------------------------------------------------- objectives


class PatchDiscriminator(nn.Module):
    """70px-style PatchGAN, shrunk: a grid of real/fake logits (spectral norm keeps the hinge game stable)."""

    def __init__(self, ch: int = 32):
        super().__init__()
        sn = nn.utils.spectral_norm
        self.net = nn.Sequential(sn(nn.Conv2d(3, ch, 4, 2, 1)), nn.LeakyReLU(0.2),
                                 sn(nn.Conv2d(ch, ch * 2, 4, 2, 1)), nn.LeakyReLU(0.2),
                                 sn(nn.Conv2d(ch * 2, ch * 2, 3, 1, 1)), nn.LeakyReLU(0.2),
                                 sn(nn.Conv2d(ch * 2, 1, 3, 1, 1)))

    def forward(self, x):
        return self.net(x)


class GANObjective:
    def __init__(self, model: nn.Module, lr: float, device, adv: float):
        self.model, self.adv = model, adv
        self.disc = PatchDiscriminator().to(device)
        self.opt_g = torch.optim.Adam(model.parameters(), lr, betas=(0.5, 0.9))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr, betas=(0.5, 0.9))

    def step(self, real: torch.Tensor) -> dict:
        fake = self.model(real)
        d_loss = F.relu(1 - self.disc(real)).mean() + F.relu(1 + self.disc(fake.detach())).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        l1 = (fake - real).abs().mean()
        g_adv = -self.disc(fake).mean()
        self.opt_g.zero_grad(set_to_none=True)
        (l1 + self.adv * g_adv).backward()
        self.opt_g.step()
        return {"l1": l1.item(), "g_adv": g_adv.item(), "d": d_loss.item()}

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


class SingleLossObjective:
    """One model, one AdamW, one loss: the VAE and the DDPM."""

    def __init__(self, model: nn.Module, lr: float, loss_fn):
        self.model, self.loss_fn = model, loss_fn
        self.opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=0.0)

    def step(self, real: torch.Tensor) -> dict:
        loss, logs = self.loss_fn(self.model, real)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return logs

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])


def vae_loss(kl_weight: float):
    def loss_fn(vae, real):
        post = vae.encode(real).latent_dist
        rec = vae.decode(post.sample()).sample
        l1, kl = (rec - real).abs().mean(), post.kl().mean()
        return l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}
    return loss_fn


def ddpm_loss():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**house.NOISE_SCHEDULE)

    def loss_fn(unet, real):
        noise = torch.randn_like(real)
        t = torch.randint(0, house.TRAIN_T_MAX, (real.shape[0],), device=real.device)
        mse = F.mse_loss(unet(sched.add_noise(real, noise, t), t).sample, noise)
        return mse, {"mse": mse.item()}
    return loss_fn


def make_objective(family: str, model: nn.Module, lr: float, args, device):
    if family.startswith("house_gan"):
        return GANObjective(model, lr, device, args.adv)
    if family == "house_vae":
        return SingleLossObjective(model, lr, vae_loss(args.kl))
    return SingleLossObjective(model, lr, ddpm_loss())


# ---------------------------------------------------------------- checkpoints, grid, the loop


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_grid(family: str, model: nn.Module, photos, path: Path, n: int = 4, side: int = 128,
               seed: int = 1234) -> None:
    """Real windows on top, their twins in the middle, the twins' centres zoomed 4x (nearest) at the bottom."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(photos), size=min(n, len(photos)), replace=False)
    grid = Image.new("RGB", (side * len(picks), side * 3))
    model.eval()
    for col, i in enumerate(picks):
        image = photos[int(i)].image
        box = random_box(rng, image.size, side)
        fake, _ = house.render_window(family, model, image, box, house.sample_params(rng, family))
        c = side // 2 - side // 8
        zoom = fake.crop((c, c, c + side // 4, c + side // 4)).resize((side, side), Image.Resampling.NEAREST)
        for row, tile in enumerate((image.crop(box), fake, zoom)):
            grid.paste(tile, (col * side, row * side))
    model.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def train_family(family: str, args) -> Path:
    from bitmind_lite.detectors.base import resolve_device

    if args.crop % house.MULTIPLE:
        raise SystemExit(f"--crop must be a multiple of {house.MULTIPLE}, got {args.crop}")
    if args.minutes <= 0 and args.steps <= 0:
        raise SystemExit("give a budget: --minutes and/or --steps > 0")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    out = Path(args.out)
    ckpt_path, final_path = out / "checkpoints" / f"{family}.ckpt", house.weights_path(family, out)
    photos = load_photos(args.real, args.photos, max(args.crop, 128))
    images = photo_tensors(photos)
    config = house.DEFAULT_CONFIGS[family]
    torch.manual_seed(args.seed)
    model = house.build_model(family, config).to(device).train()
    lr = args.lr or DEFAULT_LR[family]
    objective = make_objective(family, model, lr, args, device)
    step, elapsed, runs = 0, 0.0, []  # runs: one entry per (resumed) invocation, so the record says what was done
    if args.resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        objective.load_state_dict(ckpt["objective"])
        step, elapsed, runs = ckpt["step"], ckpt["elapsed"], ckpt.get("runs", [])
        print(f"[{family}] resumed from {ckpt_path} at step {step} ({elapsed / 60:.1f} min trained)", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[{family}] {n_params / 1e6:.2f} M params, {len(photos)} photos, crop {args.crop}, batch {args.batch}, "
          f"device {device}, {args.threads} thread(s)", flush=True)
    run = {"from_step": step, "to_step": step, "minutes": 0.0, "crop": args.crop, "batch": args.batch, "lr": lr,
           "threads": args.threads, "device": str(device)}
    runs.append(run)

    def save_checkpoint():
        run.update(to_step=step, minutes=round((elapsed - start_elapsed) / 60, 2))
        atomic_save({"family": family, "config": config, "step": step, "elapsed": elapsed, "runs": runs,
                     "model": model.state_dict(), "objective": objective.state_dict()}, ckpt_path)

    budget_s = args.minutes * 60 if args.minutes > 0 else float("inf")
    start_elapsed = last_ckpt = elapsed
    smooth = {}
    while (args.steps <= 0 or step < args.steps) and elapsed < budget_s:
        t0 = time.perf_counter()
        rng = np.random.default_rng([args.seed, step])  # per-step streams: a resumed run draws the same batches
        torch.manual_seed(args.seed * 1_000_003 + step)
        logs = objective.step(sample_batch(images, rng, args.batch, args.crop).to(device))
        step += 1
        elapsed += time.perf_counter() - t0
        smooth = {k: v if k not in smooth else 0.95 * smooth[k] + 0.05 * v for k, v in logs.items()}
        if step % args.log_every == 0 or step == 1:
            losses = " ".join(f"{k} {v:.4f}" for k, v in smooth.items())
            print(f"[{family}] step {step} {elapsed / 60:.2f} min {step / max(elapsed, 1e-9):.2f} it/s {losses}",
                  flush=True)
        if elapsed - last_ckpt >= args.ckpt_minutes * 60:
            save_checkpoint()
            last_ckpt = elapsed
    save_checkpoint()

    train = {"steps": step, "train_minutes": round(elapsed / 60, 2), "runs": runs,
             "adv": args.adv if family.startswith("house_gan") else None,
             "kl": args.kl if family == "house_vae" else None, "seed": args.seed, "real": args.real,
             "photos": [p.id for p in photos], "final_losses": {k: round(v, 5) for k, v in smooth.items()},
             "params": n_params, "torch": str(torch.__version__), "diffusers": _version("diffusers")}
    house.save_weights(final_path, family, model, config, train)
    write_grid(family, model, photos, out / f"{family}.png")
    size_mb = final_path.stat().st_size / 2 ** 20
    print(f"[{family}] done: {step} steps in {elapsed / 60:.1f} min -> {final_path} ({size_mb:.2f} MB, sha256 "
          f"{house.file_fingerprint(final_path)}), grid {out / f'{family}.png'}", flush=True)
    return final_path


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    for family in house.FAMILIES if args.family == "all" else [args.family]:
        train_family(family, args)


if __name__ == "__main__":
    main()
