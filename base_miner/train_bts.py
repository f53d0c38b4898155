"""Train the Beyond-the-Spectrum detector (bitmind_lite/detectors/bts.py) in stages, each resumable.

    python base_miner/train_bts.py --stage sr  --dataroot DATA --name bts --max_steps 1500   # RDN on real photos
    python base_miner/train_bts.py --stage cls --dataroot DATA --name bts --max_steps 600    # classifier, SR frozen
    python base_miner/train_bts.py --stage aux --dataroot DATA --name bts --max_steps 200    # optional: end to end
    cp checkpoints/bts/cls_best.pth weights/bts.pth       # (or aux_best.pth): SR + classifier, one state_dict

sr   real photos only (DATA/train/*/0_real): random `--patch` crops x, LR = box_downscale(x), L1(RDN(LR), x).
     Validation: L1 on the val reals (center crops), next to plain bilinear up-sampling's L1.
cls  every train image (family-balanced, reals and fakes equally), random `--crop_size` crop + flip (blur/JPEG
     optional, both classes), BCE on the classifier of |RDN(LR) - x|; the SR model is frozen. Validation: the
     detector's serving path on DATA/val (balanced accuracy at 0.5, then AP), as base_miner/train.py.
aux  the seed's auxiliary tasks, end to end: with probability 0.5 the LR is corrupted (noise sigma 4/255, or
     10-25% of pixels turned gray), loss = BCE + `--rec_weight` * L1 reconstruction on the *real* images only;
     the SR parameters get `--sr_lr_scale` x the classifier's lr.
premise  no training: the paper's premise measured per family of DATA/`--split` with the SR model of `--init`
     (default sr_best.pth): mean L1 |RDN(LR) - x| of reals and fakes, and the AUC of that error alone as a fake score
     (0.5 = no signal, > 0.5 = fakes re-synthesize worse), next to plain bilinear up-sampling's L1.
     Written to CHECKPOINTS_DIR/NAME/premise_SPLIT.json.

Every stage writes CHECKPOINTS_DIR/NAME/{stage}_best.pth and {stage}_last.pth (the whole BTSNet state_dict, with
its `arch` config: `create_detector("bts", weights=...)` loads it, and `base_miner/test.py --arch bts` evaluates
it), a .meta.json beside each, {stage}_state.pt for `--resume` and {stage}_history.json. `cls` starts from
`sr_best.pth`, `aux` from `cls_best.pth` in the same folder, unless `--init PATH`. `--max_steps` is the stage's
length (the cosine schedule spans it); `--max_minutes` stops early and `--resume` continues at the same step.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # the repo root replaces base_miner/, whose test.py would shadow the stdlib `test`

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from base_miner.data import (Augment, EpochSampler, EvalDataset, TrainDataset, loader, parse_range,  # noqa: E402
                             split_families)
from base_miner.train import evaluate, save_atomic, save_weights, val_score  # noqa: E402
from bitmind_lite.detectors import create_detector  # noqa: E402
from bitmind_lite.detectors.base import load_state_dict, resolve_device  # noqa: E402
from bitmind_lite.detectors.bts import BTSConfig, BTSNet, checkpoint_config, corrupt_lr  # noqa: E402

STAGES = ("sr", "cls", "aux", "premise")
START_FROM = {"cls": "sr_best.pth", "aux": "cls_best.pth", "premise": "sr_best.pth"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_bts.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument("--dataroot", required=True, help="folder with train/ and val/ in the CNNDetection layout")
    p.add_argument("--classes", default="", help="comma-separated family folders (default: all)")
    p.add_argument("--split", default="test", help="premise: the split to measure")
    p.add_argument("--name", default="bts")
    p.add_argument("--checkpoints_dir", default="./checkpoints")
    p.add_argument("--init", default=None, help="start from this BTS checkpoint (default: the previous stage's)")
    p.add_argument("--fresh_cls", action="store_true",
                   help="cls: keep only the --init's re-synthesizer and start a new (seeded) classifier, e.g. to "
                   "train without a family from a bundled detector (leave-one-family-out)")
    p.add_argument("--resume", action="store_true", help="continue this stage where it stopped")
    p.add_argument("--max_steps", type=int, default=1000, help="length of the stage in optimizer steps")
    p.add_argument("--epochs", type=float, default=0,
                   help="length of the stage in passes over the training set instead (0 = use --max_steps)")
    p.add_argument("--max_minutes", type=float, default=0, help="stop (resumably) after this much time (0 = none)")
    p.add_argument("--save_minutes", type=float, default=5, help="save a resumable state this often")
    p.add_argument("--val_every", type=int, default=250, help="validate and checkpoint every N steps (and at the end)")
    p.add_argument("--max_val", type=int, default=0, help="validate on a seeded subset of N images (0 = all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="Adam lr (default: sr 5e-4, cls 1e-3, aux 1e-4)")
    p.add_argument("--patch", type=int, default=64, help="sr: HR patch size (LR = patch / scale)")
    p.add_argument("--crop_size", type=int, default=128, help="cls/aux: training crop (no resize)")
    p.add_argument("--eval_size", type=int, default=256, help="validation input size (the serving size)")
    p.add_argument("--blur_prob", type=float, default=0.0)
    p.add_argument("--blur_sig", default="0.0,2.0")
    p.add_argument("--jpg_prob", type=float, default=0.0)
    p.add_argument("--jpg_qual", default="60,95")
    p.add_argument("--rec_weight", type=float, default=1.0, help="aux: weight of the reconstruction loss")
    p.add_argument("--sr_lr_scale", type=float, default=1e-2, help="aux: SR lr = this x lr")
    p.add_argument("--max_train", type=int, default=0, help="a seeded subset of N training images (0 = all)")
    p.add_argument("--cache_decoded", action="store_true", help="decode the training images once, keep them in RAM")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    arch = p.add_argument_group("network (sr stage only; later stages take the checkpoint's)")
    for field, default in asdict(BTSConfig()).items():
        arch.add_argument(f"--{field}", type=type(default), default=default)
    arch.add_argument("--vgg_weights", default=None, help="torchvision vgg19 state_dict (needed for --feature stage5)")
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    for name in ("max_steps", "batch_size", "patch", "crop_size", "eval_size", "val_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    for name in ("max_minutes", "save_minutes", "max_val", "max_train", "rec_weight", "sr_lr_scale", "epochs"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0")
    if args.patch % args.scale or args.crop_size % args.scale:
        p.error(f"--patch and --crop_size must be multiples of --scale {args.scale}")
    for name in ("blur_prob", "jpg_prob"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name} must be in [0, 1]")
    try:
        args.blur_sig, args.jpg_qual = parse_range(args.blur_sig), parse_range(args.jpg_qual, int)
        args.arch = BTSConfig(**{k: getattr(args, k) for k in asdict(BTSConfig())})
    except ValueError as e:
        p.error(str(e))
    if args.lr is None:
        args.lr = {"sr": 5e-4, "cls": 1e-3, "aux": 1e-4}.get(args.stage, 1e-3)
    if not args.lr > 0:
        p.error("--lr must be > 0")
    if args.fresh_cls and args.stage != "cls":
        p.error("--fresh_cls is for --stage cls")
    args.classes = [c for c in args.classes.split(",") if c.strip()]


# ------------------------------------------------------------------ data
def samples_of(args, split: str, reals_only: bool, limit: int) -> tuple[list, list[str]]:
    """(samples, family of each) of a split; a seeded subset of `limit` when 0 < limit < all."""
    pairs = [(s, fam) for fam, ss in split_families(args.dataroot, split, args.classes).items() for s in ss
             if not (reals_only and s[1])]
    if not pairs:
        raise ValueError(f"{args.dataroot}/{split}: no {'real ' if reals_only else ''}images")
    if 0 < limit < len(pairs):
        keep = sorted(np.random.default_rng(args.seed).choice(len(pairs), limit, replace=False))
        pairs = [pairs[i] for i in keep]
    return [s for s, _ in pairs], [f for _, f in pairs]


def unit_batch(x: torch.Tensor, device) -> torch.Tensor:
    """uint8 NxHxWx3 -> float NCHW in [0, 1] (BTS is fed unnormalised pixels)."""
    return x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255).contiguous()


def cosine_lr(args, step: int) -> float:
    """The seed's schedule lr * (0.9999 cos(pi/2 t/T) + 1e-4), per step and stateless (resume needs only the step)."""
    return args.lr * (0.9999 * math.cos(math.pi / 2 * step / max(1, args.max_steps - 1)) + 1e-4)


# ------------------------------------------------------------------ validation
def validate_sr(net, samples, detector, batch_size: int, device) -> dict:
    """Mean L1 of RDN(box_downscale(x)) vs x on val reals, and of plain bilinear up-sampling (the floor to beat)."""
    net.eval()
    sums = np.zeros(3)
    with torch.inference_mode():
        for x, _ in loader(EvalDataset(samples, detector.preprocess), batch_size):
            x, sr = net.resynthesize(x.to(device))
            lr = F.avg_pool2d(x, net.cfg.scale)
            bilinear = F.interpolate(lr, scale_factor=net.cfg.scale, mode="bilinear", align_corners=False)
            sums += [(sr.clamp(0, 1) - x).abs().mean((1, 2, 3)).sum().item(),
                     (bilinear - x).abs().mean((1, 2, 3)).sum().item(), len(x)]
    net.train()
    return {"l1": sums[0] / sums[2], "bilinear_l1": sums[1] / sums[2], "n": int(sums[2])}


def measure_premise(args, device) -> int:
    from sklearn.metrics import roc_auc_score

    out = Path(args.checkpoints_dir) / args.name
    detector, init = build_net(args, out, device)
    net, rows = detector.model.eval(), {}
    for family, samples in split_families(args.dataroot, args.split, args.classes).items():
        errors, bilinear, labels = [], [], []
        with torch.inference_mode():
            for x, y in loader(EvalDataset(samples, detector.preprocess), args.batch_size):
                x, sr = net.resynthesize(x.to(device))
                up = F.interpolate(F.avg_pool2d(x, net.cfg.scale), scale_factor=net.cfg.scale, mode="bilinear")
                errors += (sr.clamp(0, 1) - x).abs().mean((1, 2, 3)).cpu().tolist()
                bilinear += (up - x).abs().mean((1, 2, 3)).cpu().tolist()
                labels += y.int().tolist()
        e, b, y = np.array(errors) * 255, np.array(bilinear) * 255, np.array(labels)  # in gray levels
        mean = lambda v, m: float(v[m].mean()) if m.any() else None  # noqa: E731
        rows[family] = {"real_l1": mean(e, y == 0), "fake_l1": mean(e, y == 1),
                        "real_bilinear_l1": mean(b, y == 0), "fake_bilinear_l1": mean(b, y == 1),
                        "auc_error": float(roc_auc_score(y, e)) if len(set(y)) == 2 else None,
                        "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"re-synthesis L1 (gray levels) of {init} on {args.dataroot}/{args.split}\n"
          f"{'family':<24} {'real':>7} {'fake':>7} {'AUC(err)':>8} {'bilinear real':>13} {'fake':>7}")
    for family, r in rows.items():
        print(f"{family:<24} {fmt(r['real_l1']):>7} {fmt(r['fake_l1']):>7} {fmt(r['auc_error']):>8} "
              f"{fmt(r['real_bilinear_l1']):>13} {fmt(r['fake_bilinear_l1']):>7}")
    path = out / f"premise_{args.split}.json"
    out.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".tmp").write_text(json.dumps({"init": str(init), "rows": rows}, indent=1))
    os.replace(path.with_name(path.name + ".tmp"), path)
    return 0


# ------------------------------------------------------------------ one step of each stage
def step_sr(net, x, y, gen):
    _, sr = net.resynthesize(x)
    loss = F.l1_loss(sr, x)
    return loss, {"l1": loss.item()}


def step_cls(net, x, y, gen):
    with torch.no_grad():  # frozen re-synthesizer
        x, sr = net.resynthesize(x)
        err = net.error(x, sr)
    logits = net.cls(err)
    loss = F.binary_cross_entropy_with_logits(logits, y)
    return loss, {"bce": loss.item(), "acc": ((logits > 0).float() == y).float().mean().item()}


def step_aux(net, x, y, gen, rec_weight: float = 1.0):
    x, sr = net.resynthesize(x, corrupt=lambda lr: corrupt_lr(lr, gen))
    logits = net.cls(net.error(x, sr))
    bce = F.binary_cross_entropy_with_logits(logits, y)
    real = y == 0
    rec = F.l1_loss(sr[real], x[real]) if real.any() else sr.sum() * 0  # reconstruction on real photos only
    loss = bce + rec_weight * rec
    return loss, {"bce": bce.item(), "rec": rec.item(), "acc": ((logits > 0).float() == y).float().mean().item()}


# ------------------------------------------------------------------ the stage
def build_net(args, out: Path, device):
    """The detector (for its preprocess) and its network: fresh for sr, else from the previous stage's checkpoint."""
    if args.stage == "sr" and not args.init:
        torch.manual_seed(args.seed)
        detector = create_detector("bts", device=device, pretrained=False, input_size=args.eval_size,
                                   vgg_weights=args.vgg_weights, **asdict(args.arch))
        return detector, None
    init = Path(args.init) if args.init else out / START_FROM[args.stage]
    if not init.is_file():
        raise FileNotFoundError(f"--stage {args.stage} starts from {init}: run the previous stage (or give --init)")
    cfg = checkpoint_config(init)
    detector = create_detector("bts", device=device, pretrained=False, input_size=args.eval_size,
                               vgg_weights=args.vgg_weights if cfg.feature == "stage5" else None, **asdict(cfg))
    detector.model.load_state_dict(load_state_dict(init), strict=True)
    if args.fresh_cls:
        fresh_classifier(detector.model, args.seed, args.vgg_weights)
    return detector, init


def fresh_classifier(net, seed: int, vgg_weights=None) -> None:
    """Replace net's classifier by the seeded one a fresh sr stage would have handed on; the SR model stays."""
    torch.manual_seed(seed)
    fresh = BTSNet(net.cfg, vgg_weights if net.cfg.feature == "stage5" else None)
    net.cls.load_state_dict(fresh.cls.state_dict())


def optimizer_for(args, net) -> torch.optim.Optimizer:
    sr, cls = list(net.sr.parameters()), list(net.cls.parameters())
    if args.stage == "sr":
        groups = [{"params": sr, "scale": 1.0}]
    elif args.stage == "cls":
        for p in sr:
            p.requires_grad_(False)
        groups = [{"params": cls, "scale": 1.0}]
    else:
        groups = [{"params": cls, "scale": 1.0}, {"params": sr, "scale": args.sr_lr_scale}]
    return torch.optim.Adam(groups, lr=args.lr)


def train(args) -> int:
    device = resolve_device(args.device)
    if args.stage == "premise":
        return measure_premise(args, device)
    out = Path(args.checkpoints_dir) / args.name
    out.mkdir(parents=True, exist_ok=True)
    detector, init = build_net(args, out, device)
    net = detector.model.train()
    reals_only = args.stage == "sr"
    train_samples, families = samples_of(args, "train", reals_only, args.max_train)
    val_samples = samples_of(args, "val", reals_only, args.max_val)[0] if (Path(args.dataroot) / "val").is_dir() \
        else []
    size = args.patch if args.stage == "sr" else args.crop_size
    augment = Augment(size, args.blur_prob if not reals_only else 0, args.blur_sig,
                      args.jpg_prob if not reals_only else 0, args.jpg_qual)
    dataset = TrainDataset(train_samples, augment, seed=args.seed, cache=args.cache_decoded, progress=True)
    sampler = EpochSampler(families, dataset.labels, "family", args.seed)
    steps_per_epoch = -(-len(sampler) // args.batch_size)
    if args.epochs:
        args.max_steps = max(1, round(args.epochs * steps_per_epoch))
    optimizer = optimizer_for(args, net)
    step_fn = {"sr": step_sr, "cls": step_cls,
               "aux": lambda *a: step_aux(*a, rec_weight=args.rec_weight)}[args.stage]

    state_path, history_path = out / f"{args.stage}_state.pt", out / f"{args.stage}_history.json"
    state = {}
    if args.resume:
        if not state_path.is_file():
            raise FileNotFoundError(f"--resume: no {state_path} (run the stage once without --resume)")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(f"--resume: {state_path} had {state['steps_per_epoch']} steps per epoch, now "
                             f"{steps_per_epoch} (data, --max_train or --batch_size changed); resume with the same")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    step, history, best = state.get("step", 0), state.get("history", []), state.get("best")
    spent = state.get("train_seconds", 0.0)
    meta = {"arch": "bts", "stage": args.stage, "config": asdict(net.cfg), "init": str(init) if init else None,
            "dataroot": str(args.dataroot), "seed": args.seed, "train_classes": sorted(set(families)),
            "n_train": len(train_samples)}
    print(f"[bts {args.stage}] {net.cfg}; {len(train_samples)} train {'reals' if reals_only else 'images'} / "
          f"{len(val_samples)} val, {size} px crops, batch {args.batch_size}, steps {step}->{args.max_steps}, "
          f"device {device}" + (f", from {init}" if init else ""), flush=True)

    def checkpoint(final: bool) -> None:
        nonlocal best
        record = {"step": step, "epoch": round(step / steps_per_epoch, 3), "seconds": round(spent + time.time() - t_run, 1),
                  **running()}
        if val_samples:
            record["val"] = validate_sr(net, val_samples, detector, args.batch_size, device) if reals_only else \
                evaluate(net, detector, val_samples, args.batch_size, 0, device)
        history.append(record)
        weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        info = {**meta, "epoch": step // steps_per_epoch, "step": step, "val": record.get("val")}
        save_weights(weights, out / f"{args.stage}_last.pth", info)
        score = None if "val" not in record else \
            (-record["val"]["l1"],) if reals_only else val_score(record["val"])
        if best is None or best["score"] is None or (score is not None and score > tuple(best["score"])):
            # without validation, best = last (as base_miner/train.py)
            best = {"step": step, "score": score}
            save_weights(weights, out / f"{args.stage}_best.pth", info)
        save_state()
        tmp = history_path.with_name(history_path.name + ".tmp")
        tmp.write_text(json.dumps({"stage": args.stage, "best": best, "history": history}, indent=1))
        os.replace(tmp, history_path)
        print(f"step {step}/{args.max_steps} {json.dumps(record)}" + (" (final)" if final else ""), flush=True)

    def save_state() -> None:
        save_atomic({"model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "step": step, "steps_per_epoch": steps_per_epoch,
                     "history": history, "best": best, "train_seconds": spent + time.time() - t_run,
                     "args": {k: str(v) for k, v in vars(args).items()}}, state_path)

    sums: dict[str, float] = {}

    def running() -> dict:
        n = sums.pop("_n", 0)
        out_ = {f"train_{k}": round(v / max(n, 1), 5) for k, v in sums.items()}
        sums.clear()
        return out_

    gen = torch.Generator()  # the aux corruptions, reseeded by step: a resumed run draws what an unbroken one would
    t_run, last_save = time.time(), time.time()
    while step < args.max_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, start=offset * args.batch_size)
        dataset.set_epoch(epoch)
        for x, y in loader(dataset, args.batch_size, 0, sampler):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(args, step) * group["scale"]
            gen.manual_seed(args.seed * 1_000_003 + step)
            loss, stats = step_fn(net, unit_batch(x, device), y.to(device), gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["_n"] = sums.get("_n", 0) + 1
            out_of_time = args.max_minutes and spent + time.time() - t_run >= 60 * args.max_minutes
            if step % args.val_every == 0 or step == args.max_steps:
                checkpoint(final=step == args.max_steps)
                last_save = time.time()
            elif out_of_time or time.time() - last_save >= 60 * args.save_minutes:
                save_state()
                last_save = time.time()
            if out_of_time:
                print(f"stopped at step {step} (--max_minutes {args.max_minutes}); --resume continues", flush=True)
                return 0
            if step >= args.max_steps:
                break
    if best is not None:
        print(f"best {args.stage} checkpoint: step {best['step']} -> {out / f'{args.stage}_best.pth'}", flush=True)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        return train(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"train_bts.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
