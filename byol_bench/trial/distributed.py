"""What a trial needs when it runs as several DDP processes (Ray Train or torchrun starts them).

Plain torch.distributed: the trial's rank and world size (lightly's helpers), a rank's share of the
images, gathering every rank's rows, and BatchNorm over the global batch on any device.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from lightly.utils.dist import rank, world_size
from torch import Tensor, nn

from byol_bench.errors import UserError

__all__ = ["rank", "world_size", "join_torchrun", "shard", "gather_rows", "sync_batchnorm"]


def join_torchrun(device: torch.device) -> torch.device:
    """In a process torchrun started, join its process group as one rank: gloo on the CPU, NCCL on GPU
    LOCAL_RANK. Returns this rank's device."""
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"device '{device}' under torchrun: every rank takes the GPU of its LOCAL_RANK; "
                            "give --device cuda (or auto)")
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:
            raise UserError(f"torchrun started a rank {local_rank} on a node with {gpus} GPUs; "
                            f"give --nproc-per-node {gpus} or less")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shard(n: int, of_rank: int | None = None, ranks: int | None = None) -> slice:
    """The contiguous rows of ``n`` that one rank handles (the first ranks take one more when uneven)."""
    of_rank, ranks = rank() if of_rank is None else of_rank, world_size() if ranks is None else ranks
    return slice(of_rank * n // ranks, (of_rank + 1) * n // ranks)


def gather_rows(local: Tensor, n: int) -> Tensor:
    """Every rank's ``shard(n)`` rows, concatenated in rank order on every rank."""
    ranks = world_size()
    if ranks == 1:
        return local
    sizes = [len(range(n)[shard(n, r, ranks)]) for r in range(ranks)]
    padded = torch.zeros((max(sizes), *local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(ranks)]
    dist.all_gather(gathered, padded)
    return torch.cat([rows[:size] for rows, size in zip(gathered, sizes)])


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over all ranks; the gradient of each rank's input is the sum of all ranks' gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of a DDP trial on CPU workers (gloo), where torch's SyncBatchNorm
    does not run: the batch mean and variance are all-reduced over the ranks, with autograd, so each rank
    normalises exactly as one process holding the whole batch would."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a batch of at least 2 dimensions, got {x.dim()}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * world_size()
        mean = _SumOverRanks.apply(x.float().sum(dims)) / count
        centred = x.float() - mean.view(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / count  # two passes: no E[x^2] - E[x]^2 cancellation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * count / (count - 1), momentum)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every BatchNorm layer normalising over the global batch of a DDP trial."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.__class__ = GlooSyncBatchNorm  # same parameters and buffers; the forward of the global batch
    return module
