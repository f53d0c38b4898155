"""Train a registered detector (npr, or the npr_raw baseline) with the NPR paper's recipe.

    python base_miner/train.py --name 4class --dataroot DATA --classes car,cat,chair,horse \\
        --batch_size 32 --delr_freq 10 --lr 0.0002 --niter 50
    torchrun --nproc_per_node 2 base_miner/train.py ...          # DDP: gloo on CPU, nccl on CUDA

DATA is the CNNDetection layout: DATA/train/<class>/0_real|1_fake/*.png (and DATA/val/... for validation); any
dataset from `bitmind-lite data build` is one, with one class folder per generator family.
Recipe: Adam(lr, betas .9/.999), BCE with logits, lr x0.9 every `--delr_freq` epochs, random 224 crop + flip without
resizing (small images are tiled), ImageNet normalisation; optional blur/JPEG augmentation for both classes.
`--balance family` (default) draws every family folder, and within it reals and fakes, equally often per epoch.
Writes to CHECKPOINTS/NAME/: model_epoch_best.pth and model_epoch_last.pth (plain state_dicts with the reference key
names, loadable by `create_detector(arch, weights=...)`, each with a .meta.json saying what made it), train_state.pt
(for --resume, also mid-epoch), history.json, curves.png and TensorBoard logs in tb/. `--batch_size` is the global
batch, split over DDP processes (see distributed.py). `--max_steps`/`--max_minutes` stop a run early with a
resumable state: `--resume` continues it at the same step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # `python base_miner/train.py` and `cd base_miner && python train.py` (the seed README)
    sys.path[0] = str(ROOT)  # the repo root replaces base_miner/, whose test.py would shadow the stdlib `test`

import numpy as np  # noqa: E402
import torch  # noqa: E402

from base_miner import adversarial, distributed  # noqa: E402
from base_miner.data import (Augment, EpochSampler, EvalDataset, TrainDataset, loader, normalize_batch,  # noqa: E402
                             parse_range, split_families, split_samples)
from base_miner.metrics import binary_metrics  # noqa: E402
from base_miner.train_log import TrainLog, plot_curves  # noqa: E402
from bitmind_lite.detectors import create_detector, list_detectors  # noqa: E402
from bitmind_lite.detectors.base import resolve_device, weights_fingerprint  # noqa: E402

BEST, LAST, STATE = "model_epoch_best.pth", "model_epoch_last.pth", "train_state.pt"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="npr", help="experiment name: outputs go to CHECKPOINTS_DIR/NAME")
    p.add_argument("--dataroot", required=True, help="folder with train/ (and val/) in the CNNDetection layout")
    p.add_argument("--classes", default="", help="comma-separated class folders to use (default: all)")
    p.add_argument("--batch_size", type=int, default=32, help="global batch size (split over DDP processes)")
    p.add_argument("--delr_freq", type=int, default=10, help="multiply the lr by 0.9 every this many epochs")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--niter", type=int, default=50, help="number of epochs")
    p.add_argument("--arch", default="npr", help="registered trainable detector (npr, npr_raw)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=None, help="data loader workers (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--seed", type=int, default=100, help="the reference uses 100")
    p.add_argument("--checkpoints_dir", default="./checkpoints")
    p.add_argument("--blur_prob", type=float, default=0.0, help="probability of Gaussian blur (both classes)")
    p.add_argument("--blur_sig", default="0.0,3.0", help="blur sigma: value or 'low,high'")
    p.add_argument("--jpg_prob", type=float, default=0.0, help="probability of JPEG re-encoding (both classes)")
    p.add_argument("--jpg_method", default="pil", help="cv2 and/or pil (the reference's names; same libjpeg encode)")
    p.add_argument("--jpg_qual", default="30,100", help="JPEG quality: value or 'low,high'")
    p.add_argument("--val_levels", default="",
                   help="also apply the validator's augmentation levels at train time, LEVEL:P,... or 'validator' "
                        "(off: `bitmind-lite data build` already bakes them into every pair)")
    p.add_argument("--balance", default="family", choices=("family", "none"),
                   help="family: every class folder, and its reals and fakes, drawn equally per epoch (default)")
    p.add_argument("--cache_decoded", action="store_true",
                   help="decode the training images once and keep them in RAM (uint8; ~200 KB per 256 px image)")
    p.add_argument("--resume", action="store_true", help="continue CHECKPOINTS_DIR/NAME where it stopped")
    p.add_argument("--init", default=None,
                   help="start from these weights (a checkpoint of the same --arch, e.g. weights/npr.pth) instead of "
                        "a fresh initialisation: fine-tuning; the optimizer and the epoch count start fresh")
    p.add_argument("--max_steps", type=int, default=0, help="stop after this many optimizer steps in all (0 = none)")
    p.add_argument("--max_minutes", type=float, default=0, help="stop after this much training time in all (0 = none)")
    p.add_argument("--save_minutes", type=float, default=10,
                   help="also save a resumable state mid-epoch this often (0 = after every step)")
    p.add_argument("--val_every", type=int, default=1, help="validate every this many epochs (0 = never)")
    p.add_argument("--crop_size", type=int, default=224, help="training crop (no resize)")
    p.add_argument("--eval_size", type=int, default=256, help="validation input size (the detector's serving size)")
    p.add_argument("--max_train", type=int, default=0,
                   help="use a seeded random subset of this many training images (0 = all): short CPU runs")
    adversarial.add_arguments(p)
    return p


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Bad input is a CLI error with a message, before any work starts."""
    for name in ("max_train", "max_steps", "max_minutes", "save_minutes", "val_every"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0")
    for name in ("batch_size", "delr_freq", "niter", "crop_size", "eval_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.crop_size % 2 or args.eval_size % 2:
        p.error("--crop_size and --eval_size must be even (NPR works on 2x2 blocks)")
    if not args.lr > 0:
        p.error("--lr must be > 0")
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0")
    for name in ("blur_prob", "jpg_prob"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name} must be in [0, 1]")
    try:
        args.blur_sig = parse_range(args.blur_sig)
        args.jpg_qual = parse_range(args.jpg_qual, int)
        args.jpg_method = [m.strip() for m in args.jpg_method.split(",") if m.strip()]
        Augment(jpg_method=args.jpg_method)  # validates the method names
        if args.val_levels:
            from bitmind_lite.data.augment import DEFAULT_LEVEL_PROBS, parse_level_probs

            args.val_levels = dict(DEFAULT_LEVEL_PROBS) if args.val_levels == "validator" else \
                parse_level_probs(args.val_levels)
    except ValueError as e:
        p.error(str(e))
    if not 1 <= args.jpg_qual[0] <= args.jpg_qual[1] <= 100:
        p.error("--jpg_qual must be within 1..100")
    if args.arch not in list_detectors():
        p.error(f"unknown --arch {args.arch!r}; registered: {', '.join(list_detectors())}")
    adversarial.check_arguments(p, args)
    args.classes = [c for c in args.classes.split(",") if c.strip()]


def lr_at(args, epoch: int) -> float:
    """The reference decay, stateless so that --resume needs nothing but the epoch: lr * 0.9^(epoch // delr_freq)."""
    return args.lr * 0.9 ** (epoch // args.delr_freq)


def evaluate(model, detector, samples, batch_size: int, workers: int, device) -> dict:
    """Validation through the detector's serving preprocess (center crop/tile at eval_size, no resize): the
    metrics of base_miner/metrics.py plus the BCE loss."""
    model.eval()
    ys, logits = [], []
    with torch.inference_mode():
        for x, y in loader(EvalDataset(samples, detector.preprocess), batch_size, workers):
            logits.append(model(x.to(device).contiguous(memory_format=torch.channels_last)).float().cpu())
            ys.append(y)
    model.train()
    y, z = torch.cat(ys), torch.cat(logits)
    loss = float(torch.nn.functional.binary_cross_entropy_with_logits(z, y))
    return {**binary_metrics(y.numpy(), torch.sigmoid(z).numpy()), "loss": loss}


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_weights(weights: dict, path: Path, meta: dict) -> None:
    """The checkpoint plus `<name>.meta.json` (what made it, stamped with its fingerprint: test.py shows it)."""
    save_atomic(weights, path)
    side = path.with_suffix(".meta.json")
    side.with_name(side.name + ".tmp").write_text(json.dumps({"weights": weights_fingerprint(path), **meta}, indent=1))
    os.replace(side.with_name(side.name + ".tmp"), side)


def val_score(m: dict) -> tuple:
    """Best checkpoint: balanced accuracy at 0.5 first (what validators see), AP to break ties."""
    bal = np.mean([v for v in (m["r_acc"], m["f_acc"]) if v is not None])
    return float(bal), float(m["ap"] or 0.0)


def training_samples(args) -> tuple[list, list[str]]:
    """(samples, family folder of each): the train split, restricted to --classes, subsampled by --max_train."""
    by_family = split_families(args.dataroot, "train", args.classes)
    samples = [s for ss in by_family.values() for s in ss]
    families = [f for f, ss in by_family.items() for _ in ss]
    if 0 < args.max_train < len(samples):
        keep = sorted(np.random.default_rng(args.seed).choice(len(samples), args.max_train, replace=False))
        samples, families = [samples[i] for i in keep], [families[i] for i in keep]
    return samples, families


def load_state(out: Path, args) -> dict:
    if not (out / STATE).is_file():
        raise FileNotFoundError(f"--resume: no {out / STATE} (train once without --resume first)")
    state = torch.load(out / STATE, map_location="cpu", weights_only=False)
    if state["arch"] != args.arch:
        raise ValueError(f"--resume: {out} was trained as --arch {state['arch']}, not {args.arch}")
    if state.get("mode", "plain") != training_mode(args):
        raise ValueError(f"--resume: {out} was trained in mode {state.get('mode', 'plain')}, not {training_mode(args)} "
                         "(--adversarial / --gen_train_type / --aug_blur must match)")
    return state


def train_state(args, net, optimizer, game, *, epoch: int, step: int, steps_per_epoch: int, sums: list,
                history: list, best, seconds: float) -> dict:
    """Everything --resume needs: at an epoch end (step 0) or mid-epoch (the epoch's step and running sums)."""
    weights = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return {"arch": args.arch, "model": weights, "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
            "steps_per_epoch": steps_per_epoch, "sums": sums, "history": history, "best": best,
            "train_seconds": seconds, "args": vars(args), "mode": training_mode(args),
            "adversarial": game.state_dict()}


def training_mode(args) -> str:
    return "adversarial-" + args.gen_train_type if args.adversarial else "aug_blur" if args.aug_blur else "plain"


def train(args) -> int:
    device = resolve_device(args.device)
    ctx = distributed.init(device.type)
    if ctx.world > 1 and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    if args.batch_size % ctx.world:
        raise ValueError(f"--batch_size {args.batch_size} must be divisible by the {ctx.world} processes")
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    out = Path(args.checkpoints_dir) / args.name
    train_samples, train_families = training_samples(args)
    val_dir = Path(args.dataroot) / "val"
    val_samples = split_samples(args.dataroot, "val", args.classes) if val_dir.is_dir() and args.val_every else []
    per_rank = args.batch_size // ctx.world
    sampler = EpochSampler(train_families, [label for _, label in train_samples], args.balance, args.seed,
                           ctx.world, ctx.rank)
    steps_per_epoch = -(-len(sampler) // per_rank)
    state = load_state(out, args) if args.resume else {}
    if state.get("step") and state["steps_per_epoch"] != steps_per_epoch:
        raise ValueError(f"--resume: {out} stopped mid-epoch with {state['steps_per_epoch']} steps per epoch, now "
                         f"{steps_per_epoch} (dataset, --max_train or --batch_size changed); resume with the same ones")

    torch.manual_seed(args.seed)  # identical initial weights on every rank (DDP also broadcasts them)
    detector = create_detector(args.arch, device=device, pretrained=False, input_size=args.eval_size)
    if not getattr(detector, "trainable", False):
        raise ValueError(f"detector {args.arch!r} is not trainable here (a detector with its own recipe has its own "
                         "script, e.g. base_miner/train_bts.py, base_miner/train_dnadet.py)")
    # the freshly initialised network, built by the registry; NHWC is faster for oneDNN and cuDNN convolutions
    net = detector.model.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999))
    if state:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    elif args.init:
        from bitmind_lite.detectors.base import load_state_dict

        net.load_state_dict(load_state_dict(args.init), strict=True)  # a wrong --arch or a bad file fails here
        print(f"initialised from {args.init}")
    start_epoch, start_step = state.get("epoch", 0), state.get("step", 0)
    history, best = [h for h in state.get("history", []) if not h.get("partial")], state.get("best")
    sums = state.get("sums", [0.0, 0.0, 0.0, 0.0])  # loss * n, correct, n, seconds of the current epoch so far
    spent = state.get("train_seconds", 0.0)  # training time of earlier runs (the --max_minutes budget)
    model = distributed.wrap(net, ctx, device)
    game = adversarial.AdversarialGame(args, device, wrap=lambda m: distributed.wrap(m, ctx, device))
    game.load_state_dict(state.get("adversarial"))

    augment = Augment(args.crop_size, args.blur_prob, args.blur_sig, args.jpg_prob, args.jpg_qual, args.jpg_method,
                      level_probs=args.val_levels or None)
    dataset = TrainDataset(train_samples, augment, seed=args.seed, cache=args.cache_decoded, progress=ctx.main)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    writer = None
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "opt.json").write_text(json.dumps(vars(args), indent=2, default=str))
        writer = TrainLog(out / "tb", args)
        counts = {f: train_families.count(f) for f in dict.fromkeys(train_families)}
        cache = f", {dataset.images.nbytes / 2**20:.1f} MiB decoded in RAM" if args.cache_decoded else ""
        print(f"[{args.arch}] {len(train_samples)} train images {counts} / {len(val_samples)} val, balance "
              f"{args.balance}, {ctx.world} process(es), device {device}{cache}, {args.niter} epoch(s) x "
              f"{steps_per_epoch} steps from epoch {start_epoch + 1} step {start_step}, mode {training_mode(args)}",
              flush=True)
    meta = {"arch": args.arch, "name": args.name, "dataroot": str(args.dataroot), "seed": args.seed,
            "train_classes": list(dict.fromkeys(train_families)), "n_train": len(train_samples),
            "mode": training_mode(args)}
    from tqdm import tqdm

    t_run, last_save, stop = time.time(), time.time(), False
    for epoch in range(start_epoch, args.niter):
        if (args.max_steps and epoch * steps_per_epoch + start_step >= args.max_steps) or \
                (args.max_minutes and spent >= 60 * args.max_minutes):
            break  # resumed with the budget already spent
        t0 = time.time() - sums[3]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(args, epoch)
        sampler.set_epoch(epoch, start=start_step * per_rank)
        dataset.set_epoch(epoch)
        step = start_step
        batches = loader(dataset, per_rank, workers, sampler, pin_memory=device.type == "cuda")
        for x, y in tqdm(batches, desc=f"epoch {epoch + 1}/{args.niter}", disable=not ctx.main, leave=False,
                         initial=step, total=steps_per_epoch):
            x = normalize_batch(x.to(device, non_blocking=True))
            y = y.to(device, non_blocking=True)
            x, y = game.detector_step_inputs(net, x, y, loss_fn)  # the batch, or it + adversarial copies
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            global_step = epoch * steps_per_epoch + step
            over = (args.max_steps and global_step + 1 >= args.max_steps) or \
                (args.max_minutes and spent + time.time() - t_run >= 60 * args.max_minutes)
            n = float(y.numel())
            reduced = distributed.all_sum(ctx, [loss.item() * n, float(((logits > 0).float() == y).sum()), n,
                                                float(bool(over))])  # every rank stops at the same step
            sums = [a + b for a, b in zip(sums, reduced[:3])] + [sums[3]]
            step, stop = step + 1, reduced[3] > 0
            if writer is not None:
                writer.step(global_step, loss=reduced[0] / reduced[2],
                            adversary_loss=game.last_adv_loss if game.enabled else None)
            if ctx.main and not stop and step < steps_per_epoch and time.time() - last_save >= 60 * args.save_minutes:
                save_atomic(train_state(args, net, optimizer, game, epoch=epoch, step=step, steps_per_epoch=steps_per_epoch,
                                        sums=sums[:3] + [time.time() - t0], history=history, best=best,
                                        seconds=spent + time.time() - t_run), out / STATE)
                last_save = time.time()
            if stop:
                break
        finished = step >= steps_per_epoch
        record = {"epoch": epoch, "steps": step, "global_step": epoch * steps_per_epoch + step,
                  "lr": lr_at(args, epoch), "train_loss": sums[0] / sums[2],
                  "train_acc": sums[1] / sums[2], "seconds": round(time.time() - t0, 2), "val": None}
        if not finished:
            record["partial"] = True  # stopped by --max_steps/--max_minutes: replaced when a resume finishes it
        if ctx.main:
            due = (epoch + 1) % max(args.val_every, 1) == 0 or epoch == args.niter - 1 or not finished
            if val_samples and due:
                record["val"] = evaluate(net, detector, val_samples, args.batch_size, workers, device)
            writer.epoch(record["global_step"], record)
            history.append(record)
            weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
            info = {**meta, "epoch": epoch, "step": epoch * steps_per_epoch + step, "partial": not finished,
                    "val": record["val"]}
            save_weights(weights, out / LAST, info)
            score = val_score(record["val"]) if record["val"] else None
            if best is None or best["score"] is None or (score is not None and score > tuple(best["score"])):
                best = {"epoch": epoch, "step": info["step"], "score": score}  # without validation, best = last
                save_weights(weights, out / BEST, info)
            save_atomic(train_state(args, net, optimizer, game, epoch=epoch + 1 if finished else epoch,
                                    step=0 if finished else step, steps_per_epoch=steps_per_epoch,
                                    sums=[0.0] * 4 if finished else sums[:3] + [time.time() - t0], history=history,
                                    best=best, seconds=spent + time.time() - t_run), out / STATE)
            last_save = time.time()
            (out / "history.json").write_text(json.dumps({"arch": args.arch, "best": best, "history": history,
                                                          "steps_per_epoch": steps_per_epoch}, indent=2))
            plot_curves(history, out / "curves.png", title=f"{args.name}: {args.arch}, {training_mode(args)}, "
                        f"{len(train_samples)} train images")
            val_txt = (f" val acc {record['val']['acc']:.3f} ap {record['val']['ap'] or 0:.3f} "
                       f"real {record['val']['r_acc'] or 0:.3f} fake {record['val']['f_acc'] or 0:.3f}"
                       if record["val"] else "")
            print(f"epoch {epoch + 1}/{args.niter} {'stopped at step ' + str(step) + ' ' if not finished else ''}"
                  f"loss {record['train_loss']:.4f} acc {record['train_acc']:.3f} lr {record['lr']:.2e} "
                  f"{record['seconds']:.0f}s{val_txt}", flush=True)
        distributed.barrier(ctx)
        sums, start_step = [0.0, 0.0, 0.0, 0.0], 0
        if stop:
            break
    if writer is not None:
        writer.close()
        if best is not None:
            print(f"saved {out / BEST} (epoch {best['epoch'] + 1}) and {out / LAST}", flush=True)
    distributed.shutdown(ctx)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        return train(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
