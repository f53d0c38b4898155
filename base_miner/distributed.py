"""DistributedDataParallel plumbing for `torchrun` (gloo on CPU, nccl on CUDA), kept out of the training loop.

`--batch_size` is the GLOBAL batch: each of N processes takes batch_size / N samples, and BatchNorm statistics are
synchronised across processes (torch's SyncBatchNorm on GPUs; `AllReduceBatchNorm2d` below on CPU, where torch's
refuses to run). So a 2-process run computes the same losses and gradients as a 1-process run with the same seed,
and the paper's batch 32 means the same thing on 1 GPU or 8.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> Dist:
    """Join the process group torchrun describes in the environment; a plain `python train.py` is world size 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    ctx = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    if device_type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # share the cores between local processes
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return ctx


def shutdown(ctx: Dist) -> None:
    if ctx.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: Dist) -> None:
    if ctx.world > 1:
        dist.barrier()


def all_sum(ctx: Dist, values: list[float]) -> list[float]:
    """Sum a few numbers over all processes (for logging: loss sums, counts)."""
    if ctx.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span all processes (CPU/gloo); same parameters and state_dict keys.

    The per-channel sum, sum of squares and count are summed with a differentiable all_reduce, so gradients flow
    through the shared statistics exactly as SyncBatchNorm's do. They use their own process group: DDP reduces
    gradient buckets asynchronously during the same backward pass, and two streams of collectives on one gloo
    group could pair up differently on different ranks.
    """

    group = None  # created by convert_batchnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        import torch.distributed.nn.functional as dist_fn  # differentiable; its successor has no autograd yet

        c = x.shape[1]
        count = torch.tensor([x.numel() / c], dtype=x.dtype, device=x.device)
        stats = dist_fn.all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]), group=self.group)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(float(n) - 1, 1.0))
        scale = self.weight * torch.rsqrt(var + self.eps)
        return x * scale.view(1, c, 1, 1) + (self.bias - mean * scale).view(1, c, 1, 1)


def convert_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """BatchNorm2d -> synchronised BN for multi-process training (keeps weights, buffers and key names)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if AllReduceBatchNorm2d.group is None:
        AllReduceBatchNorm2d.group = dist.new_group(backend="gloo")
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated")
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                      child.track_running_stats).to(child.weight.device)
            bn.load_state_dict(child.state_dict())
            setattr(model, name, bn)
        else:
            convert_batchnorm(child, device_type)
    return model


def wrap(model: nn.Module, ctx: Dist, device: torch.device) -> nn.Module:
    if ctx.world == 1:
        return model
    model = convert_batchnorm(model, device.type)
    ids = [device.index if device.index is not None else ctx.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
