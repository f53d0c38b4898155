"""NPR training throughput (forward + backward + Adam step at 224 px) for the speed options of base_miner/train.py.

    python bench/train_speed.py                              # batch 16 and 32 -> table; --json OUT.json to save
    python bench/train_speed.py --dataroot datasets/npr-procedural --batches 32 --steps 5 --threads 2

Configurations, each adding one option to the one before:
    baseline        PNG decoded on every access, NCHW contiguous tensors and weights
    cache_decoded   train.py --cache_decoded: decoded uint8 images kept in RAM
    channels_last   NHWC weights and inputs (what train.py always uses)
    compile         torch.compile of the network (compile time, the first steps, reported on its own)
Per configuration: data images/s (loader only: decode, augment, collate, normalise), step images/s (the training
step only) and total images/s (both, as train.py runs them with --workers 0), medians over --steps steps after a
warm-up step, the configurations' steps interleaved round by round (fair on a machine shared with other jobs).
Without --dataroot a small dataset is built with `bitmind-lite data build` in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]  # run as `python bench/train_speed.py` from a checkout

from base_miner.data import Augment, EpochSampler, TrainDataset, loader, normalize_batch, split_samples  # noqa: E402
from bitmind_lite.detectors import create_detector  # noqa: E402
from npr_speed import cpu_info  # noqa: E402

CONFIGS = ("baseline", "cache_decoded", "channels_last", "compile")


def dataset_root(args, tmp: str) -> Path:
    if args.dataroot:
        return Path(args.dataroot)
    from bitmind_lite.data.builder import BuildConfig, build_dataset

    out = Path(tmp) / "data"
    build_dataset(BuildConfig(out=str(out), train=args.images // 2, val=0, test_per_family=0, size=256),
                  progress=False)
    return out


class Trial:
    """One configuration, ready to run training steps through its own loader."""

    def __init__(self, config: str, samples, batch: int, device: torch.device):
        self.config, self.batch, self.device = config, batch, device
        self.channels_last = config in ("channels_last", "compile")
        self.dataset = TrainDataset(samples, Augment(224), seed=0, cache=config != "baseline")
        self.sampler = EpochSampler(["all"] * len(samples), self.dataset.labels, "none", seed=0)
        torch.manual_seed(0)
        self.net = create_detector("npr", device=device, pretrained=False, input_size=224).model.train()
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=2e-4)
        self.model = torch.compile(self.net) if config == "compile" else self.net
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.epoch, self.batches = 0, iter(())
        self.data_times, self.step_times = [], []
        self.first_step = self.step(record=False)  # allocations, oneDNN primitives, compilation

    def next_batch(self):
        while True:
            try:
                x, y = next(self.batches)
            except StopIteration:
                self.epoch += 1
                self.dataset.set_epoch(self.epoch)
                self.sampler.set_epoch(self.epoch)
                self.batches = iter(loader(self.dataset, self.batch, 0, self.sampler))
                continue
            if len(y) == self.batch:  # skip a short last batch
                return x, y

    def step(self, record: bool = True) -> float:
        t0 = time.perf_counter()
        x, y = self.next_batch()
        x, y = normalize_batch(x.to(self.device), channels_last=self.channels_last), y.to(self.device)
        t1 = time.perf_counter()
        loss = self.loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if record:
            self.data_times.append(t1 - t0)
            self.step_times.append(t2 - t1)
        return t2 - t1

    def result(self) -> dict:
        data, step, b = statistics.median(self.data_times), statistics.median(self.step_times), self.batch
        return {"config": self.config, "batch": b, "data_img_s": round(b / data, 1), "step_img_s": round(b / step, 2),
                "total_img_s": round(b / (data + step), 2), "first_step_s": round(self.first_step, 2),
                "steps": len(self.step_times), "cache_mib": round(self.dataset.images.nbytes / 2**20, 1)}


def measure(configs: list[str], samples, batch: int, steps: int, device: torch.device) -> list[dict]:
    """Interleaved rounds (one step of every configuration per round), so the load of other jobs on a shared
    machine falls on every configuration alike."""
    trials = [Trial(c, samples, batch, device) for c in configs]
    for _ in range(steps):
        for t in trials:
            t.step()
    return [t.result() for t in trials]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", default=None, help="a built dataset (default: build a small one in a temp folder)")
    p.add_argument("--images", type=int, default=96, help="images of the temporary dataset / used from --dataroot")
    p.add_argument("--batches", default="16,32")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up step)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    if any(c not in CONFIGS for c in configs):
        p.error(f"--configs: choose from {', '.join(CONFIGS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        samples = split_samples(dataset_root(args, tmp), "train")[: args.images]
        if len(samples) < 2 * max(batches):
            p.error(f"need at least {2 * max(batches)} training images, found {len(samples)}")
        rows = []
        for batch in batches:
            for r in measure(configs, samples, batch, args.steps, device):
                rows.append(r)
                print(f"batch {batch:>3} {r['config']:<14} data {r['data_img_s']:>7.1f} img/s  step "
                      f"{r['step_img_s']:>6.2f} img/s  total {r['total_img_s']:>6.2f} img/s  first step "
                      f"{r['first_step_s']:>6.1f} s", flush=True)
    info = {**cpu_info(), "torch_threads": torch.get_num_threads(), "device": str(device), "images": len(samples),
            "note": "medians; a shared machine: other jobs ran at the same time"}
    print(f"\n{info['cpu']}, {info['torch_threads']} torch thread(s), {len(samples)} images of 256 px, crop 224")
    print(f"{'batch':>5}  {'config':<14} {'data img/s':>10} {'step img/s':>10} {'total img/s':>11} {'vs base':>8} "
          f"{'first step s':>12}")
    for r in rows:
        base = next(b for b in rows if b["batch"] == r["batch"])["total_img_s"]
        print(f"{r['batch']:>5}  {r['config']:<14} {r['data_img_s']:>10.1f} {r['step_img_s']:>10.2f} "
              f"{r['total_img_s']:>11.2f} {r['total_img_s'] / base:>7.2f}x {r['first_step_s']:>12.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": info, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
