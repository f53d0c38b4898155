"""Train DNA-Det (bitmind_lite/detectors/dnadet.py): generator-architecture attribution on the offline zoo.

    python -m base_miner.train_dnadet --stage data --data D [--house_seed_dir S]   # the attribution set
    python -m base_miner.train_dnadet --stage pretrain --data D --out O            # transformation classification
    python -m base_miner.train_dnadet --stage attr --data D --out O                # CE + patchwise SupCon
    python -m base_miner.train_dnadet --stage eval --data D --out O                # cross-model table, confusion
    python -m base_miner.train_dnadet --stage all ...                              # the four in order

Data (D): one class per architecture (dnadet.DEFAULT_CLASSES: real, the five procedural up-samplers, the five ncnn
SR networks, the four house generators), `--size` squares cut from the bundled photos with the dataset builder's
own photo split (train photos for train, test photos for the tests). Some models of each architecture never
reach training (HELD_OUT_MODELS, and the house GANs' second seed from `--house_seed_dir`): D/test holds them,
D/test_seen the trained models on test photos, D/pretrain real windows for the pre-training.
pretrain: a random bank transformation (transforms_bank.py) per real window, `--views` 64x64 crops each, CE.
attr: class-balanced batches (`--per_class` images of every class), `--views` 64x64 crops each; CE over every crop
+ SupCon over the views of each image (learned weighting, `--awl`), initialised from O/pretrain.pth when there.
Both: Adam, lr x0.9 every --lr_step steps, O/<stage>_state.pt every --save_every steps (atomic), `--resume`;
`--max_steps` / `--max_minutes` stop a stage early, resumably. O/dnadet.pth (+ .meta.json) is the checkpoint
`create_detector("dnadet", weights=...)` loads; eval (eval_dnadet.py) writes O/eval.json, O/cross_model.md,
O/confusion.png.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from base_miner.data import normalize_batch
from base_miner.eval_dnadet import evaluate, load_folder
from base_miner.train import save_atomic, save_weights
from base_miner.transforms_bank import BANKS, get_bank
from bitmind_lite.detectors.base import Calibration, resolve_device, save_calibration, weights_fingerprint
from bitmind_lite.detectors.dnadet import DEFAULT_CLASSES, DEFAULT_NF, REAL, DNANet

# Models of each architecture kept out of training (substrings of the ncnn model path): the cross-model test.
HELD_OUT_MODELS = {
    "realcugan": ("models-pro/",),  # Real-CUGAN pro: trained apart from se / nose
    "waifu2x_cunet": ("noise1_", "noise3_"),  # two of the five denoise models
    "waifu2x_upconv7": ("anime_style_art_rgb",),  # trained on anime art, not photos: cross-dataset
    "srmd": ("srmdnf",),  # the noise-free SRMD models
    "span": ("2xHFA2kSPAN", "ClearReality4x"),  # community-trained SPAN weights
}
HOUSE_SEEDED = ("house_gan_deconv", "house_gan_pixelshuffle")  # a second seed can be trained in minutes
SPLITS = ("train", "test_seen", "test")
CROP = 64  # DNA-Det's patch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m base_miner.train_dnadet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=("data", "pretrain", "attr", "eval", "all"))
    p.add_argument("--data", required=True, help="the attribution set (written by --stage data)")
    p.add_argument("--out", default="checkpoints/dnadet", help="checkpoints, weights and the evaluation")
    p.add_argument("--classes", default=",".join(DEFAULT_CLASSES), help="real first, then generator families")
    p.add_argument("--size", type=int, default=128, help="side of each image in the set (and the eval input)")
    p.add_argument("--train_per_class", type=int, default=48)
    p.add_argument("--test_per_class", type=int, default=24, help="held-out models, test photos")
    p.add_argument("--test_seen_per_class", type=int, default=12, help="trained models, test photos")
    p.add_argument("--pretrain_windows", type=int, default=256, help="real windows for the pre-training")
    p.add_argument("--house_seed_dir", default="", help="house GAN weights of another seed (train_generators)")
    p.add_argument("--nf", type=int, default=DEFAULT_NF, help="width: 64 is the paper's")
    p.add_argument("--bank", default="reduced", choices=tuple(BANKS))
    p.add_argument("--pretrain_steps", type=int, default=1000)
    p.add_argument("--attr_steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=32, help="pretrain: images per step")
    p.add_argument("--per_class", type=int, default=2, help="attr: images of each class per step")
    p.add_argument("--views", type=int, default=4, help="64x64 crops per image")
    p.add_argument("--lr", type=float, default=2e-4, help="1e-3 (the paper's LSUN value) did not learn here")
    p.add_argument("--lr_step", type=int, default=500, help="lr x0.9 every this many steps")
    p.add_argument("--temperature", type=float, default=0.07, help="SupCon temperature")
    p.add_argument("--awl", type=int, default=1, help="1: learned CE/SupCon weighting (the paper's); 0: plain sum")
    p.add_argument("--init", default="", help="attr: backbone from this pretrain checkpoint (default O/pretrain.pth)")
    p.add_argument("--weights", default="", help="eval: this checkpoint (default O/dnadet.pth)")
    p.add_argument("--resume", action="store_true", help="continue a training stage from O/<stage>_state.pt")
    p.add_argument("--max_steps", type=int, default=0, help="stop a training stage at this step, resumably")
    p.add_argument("--max_minutes", type=float, default=0, help="stop a training stage after this long, resumably")
    p.add_argument("--save_every", type=int, default=200)
    p.add_argument("--log_every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="photo split (as `bitmind-lite data build`) and batches")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    return p


# ---------------------------------------------------------------- the attribution set
def is_held_out(variant) -> bool:
    return any(s in variant.param for s in HELD_OUT_MODELS.get(variant.family, ()))


def photo_split(seed: int):
    """(the bundled photos, {split: [photo id]}): the dataset builder's own seeded train / val / test split."""
    from bitmind_lite.data.builder import BuildConfig, Builder

    builder = Builder(BuildConfig(out="", real=["bundled"], fake=["procedural"], seed=seed))
    pools = {split: [pid for _, pid in builder.photos[split]] for split in ("train", "test")}
    real = builder.reals[0]
    builder.close()
    return real, pools


def split_sources(classes, house_seed_dir: str) -> dict[str, dict]:
    """{split: {class: fake source}}: each split sees only its models (ncnn variants filtered, house GAN seeds)."""
    from bitmind_lite.data import house
    from bitmind_lite.data.families import FamilyMix

    fakes = [c for c in classes if c != REAL]
    out = {}
    for split in SPLITS:
        mix = FamilyMix.from_spec(",".join(fakes))
        out[split] = {c: mix.source_for(c) for c in fakes}
        for src in {id(s): s for s in out[split].values()}.values():
            for family, variants in getattr(src, "variants", {}).items():  # the ncnn zoo: one entry per model
                keep = [v for v in variants if is_held_out(v) == (split == "test")]
                src.variants[family] = keep or variants  # an architecture without held-out models keeps all
        seeded = [c for c in HOUSE_SEEDED if c in fakes]
        if split == "test" and house_seed_dir and seeded:
            other = house.open_source(seeded, weights_dir=house_seed_dir)
            out[split].update({c: other for c in seeded})
    return out


def plan(args, classes) -> list[tuple[str, str, int]]:
    counts = {"train": args.train_per_class, "test": args.test_per_class, "test_seen": args.test_seen_per_class}
    has_seen = set(HELD_OUT_MODELS) | (set(HOUSE_SEEDED) if args.house_seed_dir else set())
    return [(split, c, i) for split in SPLITS for c in classes if split != "test_seen" or c in has_seen
            for i in range(counts[split])]


def save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def build_data(args, classes) -> None:
    """Write the attribution set; items already on disk are kept (an interrupted build resumes)."""
    from bitmind_lite.data.photo import content_box, ensure_min_size

    root = Path(args.data)
    real, pools = photo_split(args.seed)
    todo = [it for it in plan(args, classes) if not (root / it[0] / it[1] / f"{it[2]:04d}.png").exists()]

    def photo_of(split: str, c: str, i: int) -> str:  # cycled per class, as the dataset builder does
        pool = pools["train" if split == "train" else "test"]
        return pool[(i + zlib.crc32(c.encode())) % len(pool)]

    def window(photo_id: str, rng: np.random.Generator):
        photo = real.photo(photo_id)
        if photo is None:
            raise SystemExit(f"bundled photo {photo_id} is unreadable (see the warning above)")
        canvas = ensure_min_size(photo.image, args.size)
        return photo, canvas, content_box(rng, canvas, args.size)  # the builder's window: never a flat one

    todo.sort(key=lambda it: photo_of(*it))  # photo-major: each (large) photo is decoded once
    sources = split_sources(classes, args.house_seed_dir) if todo else {}
    start = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "records.jsonl", "a") as records:  # what made each image (model file, seed, ...)
        for n, (split, c, i) in enumerate(todo):
            rng = np.random.default_rng([args.seed, SPLITS.index(split), zlib.crc32(c.encode()), i])
            photo, canvas, box = window(photo_of(split, c, i), rng)
            img, gen = (canvas.crop(box), {"family": REAL}) if c == REAL else \
                sources[split][c].make(photo, box, rng, family=c)
            save_png(img, root / split / c / f"{i:04d}.png")
            records.write(json.dumps({"split": split, "class": c, "index": i, "photo": photo.id, "window": box,
                                      "generator": gen}) + "\n")
            if n % 100 == 0:
                print(f"data: {n}/{len(todo)} ({time.perf_counter() - start:.0f} s)", flush=True)
    for i in range(args.pretrain_windows):
        path = root / "pretrain" / f"{i:04d}.png"
        if not path.exists():
            rng = np.random.default_rng([args.seed, 99, i])
            _, canvas, box = window(pools["train"][i % len(pools["train"])], rng)
            save_png(canvas.crop(box), path)
    for src in {id(s): s for by_class in sources.values() for s in by_class.values()}.values():
        src.close()
    print(f"data: {len(todo)} images made in {time.perf_counter() - start:.0f} s -> {root}", flush=True)


# ---------------------------------------------------------------- losses and batches
def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) over L2-normalised features [B, n_views, D] with one label
    per image: every view is pulled towards all other views of its class and pushed from the rest."""
    b, v, d = features.shape
    z = features.reshape(b * v, d)
    y = labels.repeat_interleave(v)
    self_mask = torch.eye(b * v, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (y[:, None] == y[None, :]) & ~self_mask
    has_positive = positive.any(1)
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp(min=1)
    return -mean_log_prob[has_positive].mean()


class AutomaticWeightedLoss(nn.Module):
    """The paper's learned weighting of n losses: sum 0.5 / p_i^2 * L_i + log(1 + p_i^2)."""

    def __init__(self, n: int = 2):
        super().__init__()
        self.params = nn.Parameter(torch.ones(n))

    def forward(self, *losses: torch.Tensor) -> torch.Tensor:
        p2 = self.params ** 2
        return sum(0.5 / p2[i] * loss + torch.log1p(p2[i]) for i, loss in enumerate(losses))


def crops(images: list[np.ndarray], views: int, rng: np.random.Generator) -> torch.Tensor:
    """uint8 [len(images), views, CROP, CROP, 3]: random patches at any offset (every generator grid phase)."""
    out = np.empty((len(images), views, CROP, CROP, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        for j in range(views):
            y, x = int(rng.integers(h - CROP + 1)), int(rng.integers(w - CROP + 1))
            out[i, j] = img[y:y + CROP, x:x + CROP]
    return torch.from_numpy(out)


def to_input(patches: torch.Tensor, device) -> torch.Tensor:
    """uint8 [..., CROP, CROP, 3] -> normalised float NCHW on device, as the detector's preprocess normalises."""
    return normalize_batch(patches.reshape(-1, CROP, CROP, 3), channels_last=False).contiguous().to(device)


# ---------------------------------------------------------------- the two training stages
def train_loop(args, stage: str, modules: dict[str, nn.Module], optimizer, steps: int, step_fn) -> bool:
    """Run `step_fn(rng) -> (loss, logs)` to `steps` (resumable); True when the stage is complete."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path, step, history = out / f"{stage}_state.pt", 0, []
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        for name, m in modules.items():
            m.load_state_dict(state[name])
        optimizer.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        print(f"{stage}: resumed at step {step}", flush=True)

    def save():
        save_atomic({**{n: m.state_dict() for n, m in modules.items()}, "optimizer": optimizer.state_dict(),
                     "step": step, "history": history}, state_path)

    stop = min(steps, args.max_steps) if args.max_steps else steps
    start, sums = time.perf_counter(), {}
    for m in modules.values():
        m.train()
    while step < stop and not (args.max_minutes and time.perf_counter() - start > args.max_minutes * 60):
        rng = np.random.default_rng([args.seed, zlib.crc32(stage.encode()), step])  # resumed runs draw the same
        torch.manual_seed(args.seed * 1_000_003 + step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * 0.9 ** (step // args.lr_step)
        loss, logs = step_fn(rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        sums = {k: sums.get(k, 0.0) + v for k, v in logs.items()}
        if step % args.log_every == 0 or step == stop:
            n = args.log_every if step % args.log_every == 0 else step % args.log_every
            history.append({"step": step, **{k: round(v / n, 5) for k, v in sums.items()}})
            print(f"{stage}: step {step}/{steps} {time.perf_counter() - start:.0f} s "
                  + " ".join(f"{k} {v / n:.4f}" for k, v in sums.items()), flush=True)
            sums = {}
        if step % args.save_every == 0:
            save()
    save()
    return step >= steps


def adam(groups: list[dict]) -> torch.optim.Adam:
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.Adam(groups)


def pretrain(args, device) -> None:
    bank = get_bank(args.bank)
    images = load_folder(Path(args.data) / "pretrain")
    if not images:
        raise SystemExit(f"no pre-training windows under {args.data}/pretrain (run --stage data first)")
    torch.manual_seed(args.seed)  # the initialisation too: the same command gives the same weights
    model = DNANet(len(bank), nf=args.nf).to(device)
    opt = adam([{"params": model.parameters(), "lr": args.lr}])

    def step(rng):
        picks = rng.integers(len(images), size=args.batch)
        labels = rng.integers(len(bank), size=args.batch)
        x = [bank[t](images[i], rng) for i, t in zip(picks, labels)]
        logits = model(to_input(crops(x, args.views, rng), device))
        y = torch.from_numpy(labels).to(device).repeat_interleave(args.views)
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": loss.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

    if train_loop(args, "pretrain", {"model": model}, opt, args.pretrain_steps, step):
        save_weights(model.state_dict(), Path(args.out) / "pretrain.pth",
                     {"stage": "pretrain", "bank": args.bank, "classes": [t.name for t in bank], "nf": args.nf,
                      "steps": args.pretrain_steps})


def attr(args, device, classes) -> None:
    data = {c: load_folder(Path(args.data) / "train" / c) for c in classes}
    empty = [c for c, ims in data.items() if not ims]
    if empty:
        raise SystemExit(f"no training images for {empty} under {args.data}/train (run --stage data first)")
    torch.manual_seed(args.seed)
    model = DNANet(len(classes), nf=args.nf).to(device)
    init = Path(args.init or Path(args.out) / "pretrain.pth")
    if init.is_file():  # the backbone only: the pre-training head has one class per transformation
        from bitmind_lite.detectors.checkpoint import load_state_dict

        model.features.load_state_dict({k[len("features."):]: v for k, v in load_state_dict(init).items()
                                        if k.startswith("features.")})
        print(f"attr: backbone from {init}", flush=True)
    elif args.init:
        raise SystemExit(f"--init {init}: no such file")
    awl = AutomaticWeightedLoss(2).to(device)
    opt = adam([{"params": model.parameters(), "lr": args.lr}, {"params": awl.parameters(), "lr": 0.01}])

    def step(rng):
        picks = [(k, int(i)) for k, c in enumerate(classes)  # class-balanced: per_class images of every class
                 for i in rng.choice(len(data[c]), args.per_class, replace=len(data[c]) < args.per_class)]
        patches = crops([data[classes[k]][i] for k, i in picks], args.views, rng)
        logits, z = model.forward_train(to_input(patches, device))
        labels = torch.tensor([k for k, _ in picks], device=device)
        y = labels.repeat_interleave(args.views)
        ce = F.cross_entropy(logits, y)
        con = supcon_loss(z.reshape(len(picks), args.views, -1), labels, args.temperature)
        loss = awl(ce, con) if args.awl else ce + con
        return loss, {"ce": ce.item(), "supcon": con.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

    if train_loop(args, "attr", {"model": model, "awl": awl}, opt, args.attr_steps, step):
        path = Path(args.out) / "dnadet.pth"
        save_weights(model.state_dict(), path,
                     {"stage": "attr", "classes": list(classes), "nf": args.nf, "steps": args.attr_steps,
                      "init": str(init) if init.is_file() else None, "data": str(args.data), "views": args.views,
                      "per_class": args.per_class, "awl": bool(args.awl), "held_out_models": HELD_OUT_MODELS})
        save_prior_correction(path, len(classes) - 1)


def save_prior_correction(weights: Path, generators: int) -> None:
    """Class-balanced batches hold `generators` AI classes per real one, so the net learns prior odds of AI of
    generators:1; validators serve about as many real as AI images. The sidecar takes ln(generators) off the AI
    log-odds (derived, not fitted; create_detector applies it, calibrate=False gives the raw 1 - P(real))."""
    save_calibration(weights, Calibration(1.0, round(-math.log(generators), 6), weights_fingerprint(weights), {
        "what": f"prior correction, not fitted: training odds of AI {generators}:1, validators' about 1:1",
        "generator_classes": generators}))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    if not classes or classes[0] != REAL or len(classes) < 2:
        raise SystemExit(f"--classes must start with {REAL!r} and name at least one generator family")
    if args.size < CROP:
        raise SystemExit(f"--size must be at least {CROP}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    stages = ("data", "pretrain", "attr", "eval") if args.stage == "all" else (args.stage,)
    if "data" in stages:
        build_data(args, classes)
    if "pretrain" in stages:
        pretrain(args, device)
    if "attr" in stages:
        attr(args, device, classes)
    if "eval" in stages:
        evaluate(Path(args.data), Path(args.weights or Path(args.out) / "dnadet.pth"), Path(args.out), args.device,
                 args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
