"""One benchmark trial, top to bottom: load data, pretrain an SSL method, measure it, evaluate it.

``run_trial`` is plain PyTorch and knows nothing of Ray: the sweep passes ``on_epoch`` to report each
epoch's row and checkpoint, and ``resume`` to continue from a checkpoint. Run in every process of a
torch.distributed group (a DDP trial, ``workers`` > 1), each rank trains on its share of every global
batch and extracts features for its share of the evaluation images; every rank returns the same result.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from byol_bench.backbones import build_backbone
from byol_bench.config import TrialConfig
from byol_bench.data import ImageData, load_data
from byol_bench.distributed import gather_rows, rank, shard, sync_batchnorm, world_size
from byol_bench.errors import UserError
from byol_bench.evaluate import (PROBE_METHOD, ProbeRecipe, evaluate_features, extract_features, raw_pixel_features,
                                 representation_stats)
from byol_bench.methods import METHODS, uses_momentum
from byol_bench.provenance import provenance
from byol_bench.schedules import learning_rate, parse_momentum_schedule
from byol_bench.views import RECIPES, PILViewDataset, TensorViews

PROGRESS_EVERY_S = 10.0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but PyTorch sees no CUDA device here; use --device cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=None)
def measured_peak_flops(device: torch.device, dtype: torch.dtype, threads: int) -> float:
    """MFU's denominator, measured once per process and thread count."""
    return matrix_product_flops(device, dtype)


def matrix_product_flops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """The device's matrix-product FLOP/s: the best of ``repeats`` timings (shared CPUs vary by ±15%)."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    # fp32 convolutions on CUDA run in TF32 by default (cudnn.allow_tf32): the peak must be TF32's too.
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    previous, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, tf32 or torch.backends.cuda.matmul.allow_tf32
    try:
        a @ b  # warm-up: kernels chosen, caches filled
        synchronize(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size**3 / best


class PeakMemory:
    """This trial's peak memory: on CUDA the most PyTorch allocated since the trial began; on the CPU the
    largest resident set seen after a step (the process's own high-water mark would carry an earlier
    trial's peak into a reused Ray worker)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        if self.device.type != "cuda":
            self.peak = max(self.peak, resident_bytes())

    def bytes(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else self.peak


def resident_bytes() -> int:
    try:  # Linux: the current resident set, in pages
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # elsewhere: the process's high-water mark, in bytes on macOS and KiB on the BSDs
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


class StepClock:
    """One epoch's step times, each from the end of the previous step (so waiting for data counts), and
    the part of each spent getting the batch. On CUDA the marks are events on the stream, read when the
    times are asked for: the host never waits for the device between steps, so it queues the next batch
    while the GPU trains. On the CPU they are clock readings."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.marks = []  # (start, got_batch, done) of every timed step

    def now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))  # the trial's GPU, which need not be the current one
        return event

    def add(self, start, got_batch, done) -> None:
        self.marks.append((start, got_batch, done))

    def times(self) -> tuple[list[float], list[float]]:
        """(step times, data waits) in seconds, of every step added so far; the device has caught up on return."""
        synchronize(self.device)
        elapsed = (lambda a, b: a.elapsed_time(b) / 1000) if self.cuda else (lambda a, b: b - a)
        return [elapsed(s, d) for s, _, d in self.marks], [elapsed(s, g) for s, g, _ in self.marks]


def images_per_second(cfg: TrialConfig, step_times: list[float]) -> float | None:
    return cfg.global_batch_size * len(step_times) / sum(step_times) if step_times else None  # ranks step in lockstep


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's shuffling and augmentation derive from (seed, epoch): a resumed trial repeats them."""
    return seed * 100_003 + epoch


class Evaluator:
    """Evaluates a frozen backbone on un-augmented train (bank/probe) and test images."""

    def __init__(self, data: ImageData, cfg: TrialConfig, device: torch.device):
        self.data, self.cfg, self.device = data, cfg, device
        self.train_labels = data.train_labels.to(device)
        self.test_labels = data.test_labels.to(device)
        self.probe = ProbeRecipe(epochs=cfg.probe_epochs, lr=cfg.probe_lr)

    def _extract(self, module, images: Tensor) -> Tensor:
        """Features of all ``images``: in a DDP trial each rank extracts its share, then all ranks get every row."""
        local = extract_features(module, images[shard(len(images))], self.data.mean, self.data.std, self.device)
        return gather_rows(local, len(images))

    def features(self, backbone) -> tuple[Tensor, Tensor]:
        return self._extract(backbone, self.data.train_images), self._extract(backbone, self.data.test_images)

    def __call__(self, backbone, with_probe: bool = True) -> dict:
        train, test = self.features(backbone)
        return self._scores(train, test, with_probe)

    def collapse_indicators(self, method) -> dict:
        """RankMe and the normalised std of the projection head's output on the test images."""
        embed = torch.nn.Sequential(method.backbone, method.projection_head)
        return representation_stats(self._extract(embed, self.data.test_images))

    def _scores(self, train: Tensor, test: Tensor, with_probe: bool) -> dict:
        return evaluate_features(train, self.train_labels, test, self.test_labels, self.data.num_classes,
                                 self.cfg.knn_k, self.cfg.knn_t, self.probe if with_probe else None, self.cfg.seed)

    def floors(self, random_init_method) -> dict:
        """The same protocol on a random-init backbone and (for images <= 32 px) on raw pixels."""
        scores = {**self(random_init_method.backbone), **self.collapse_indicators(random_init_method)}
        floors = {f"random_init_{key}": value for key, value in scores.items()}
        if self.data.image_size <= 32:
            d = self.data
            train, test = raw_pixel_features(d.train_images.to(self.device), d.test_images.to(self.device), d.mean, d.std)
            raw = self._scores(train, test, with_probe=False)
            floors.update(raw_pixels_knn_top1=raw["knn_top1"], raw_pixels_knn_top5=raw["knn_top5"])
        return floors


def collapse_rank(projection_dim: int) -> float:
    """Below this effective rank of its projections a trial counts as collapsed: near 1 is a full collapse
    (RankMe); SimSiam without stop-gradient fell to ~3 of 128 here in 4 epochs, its healthy twin stayed ~30."""
    return max(2.0, projection_dim / 20)


def epoch_order(cfg: TrialConfig, num_images: int, epoch: int) -> Tensor:
    """This rank's images for ``epoch``, batch after batch: one seeded shuffle cut into global batches
    (the remainder dropped), each global batch split into the ranks' consecutive shares."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)))
    steps = num_images // cfg.global_batch_size
    return order[: steps * cfg.global_batch_size].view(steps, world_size(), cfg.batch_size)[:, rank()].reshape(-1)


def make_batches(cfg: TrialConfig, data: ImageData, method_views, device: torch.device):
    """A function epoch -> iterator of this rank's (view0, view1) batches on ``device``, seeded per epoch."""
    images = data.pretrain_images
    if cfg.augment == "tensor":
        on_device = images.to(device)
        views = TensorViews(method_views, data.image_size, data.channels, data.mean, data.std, cfg.seed, device,
                            rank(), world_size())

        def tensor_batches(epoch: int):
            views.seed(epoch_seed(cfg.seed, epoch))
            for batch in epoch_order(cfg, len(images), epoch).to(device).split(cfg.batch_size):
                yield views(on_device[batch])

        return tensor_batches
    dataset = PILViewDataset(images, method_views, data.image_size, data.channels, data.mean, data.std)

    def pil_batches(epoch: int):
        # The generator seeds the loader workers' transforms: per epoch (a resumed trial repeats them) and per rank.
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=epoch_order(cfg, len(images), epoch).tolist(),
            num_workers=cfg.loader_workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) * 1009 + rank()))
        for view0, view1 in loader:
            yield view0.to(device, non_blocking=True), view1.to(device, non_blocking=True)

    return pil_batches


def build_optimizer(cfg: TrialConfig, method: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimizer == "lars":
        from lightly.utils.lars import LARS

        return LARS(params, lr=cfg.peak_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.peak_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)


def make_train_step(cfg: TrialConfig, method: torch.nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
    """The trial's optimisation step, with the speed switches applied: step(view0, view1, lr, tau) -> loss.

    In a DDP trial the loss runs through DistributedDataParallel, which averages the gradients over the
    ranks (and copies rank 0's weights to every rank when it wraps the method).
    Pass ``flop_counter`` (a FlopCounterMode) to count one step's FLOPs; that step runs eagerly, since
    compiled kernels bypass the counter.
    """
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    method.to(memory_format=memory_format)
    model = method
    if world_size() > 1:  # with SyncBatchNorm the ranks' BatchNorm buffers agree already: nothing to broadcast
        gpu = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        model = DistributedDataParallel(method, device_ids=gpu, broadcast_buffers=not cfg.sync_batchnorm)
    compiled_model = torch.compile(model) if cfg.compile else model

    def train_step(view0: Tensor, view1: Tensor, lr: float, tau: float | None, flop_counter=None) -> Tensor:
        for group in optimizer.param_groups:
            group["lr"] = lr
        view0, view1 = (v.contiguous(memory_format=memory_format) for v in (view0, view1))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            with flop_counter or nullcontext():
                loss = (model if flop_counter else compiled_model)(view0, view1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
        optimizer.step()
        if tau is not None:
            method.update_target(tau)
        return loss.detach()

    return train_step


def run_trial(cfg: TrialConfig, on_epoch: Callable[[dict, dict], None] | None = None, resume: dict | None = None,
              log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)) -> dict:
    """Pretrain ``cfg.method``, then evaluate it; returns the trial's result (see README, "Trial result").

    ``on_epoch(row, state)`` is called after every epoch with that epoch's history row and a
    checkpoint ``state`` that ``resume`` accepts to continue the trial from the next epoch. In a DDP
    trial it is called on every rank (the states are the same); only rank 0 logs.
    """
    if cfg.workers != world_size():
        raise UserError(f"workers {cfg.workers}: this process group has {world_size()}; run a trial with workers N "
                        "under 'torchrun --nproc-per-node N -m byol_bench.cli train --workers N ...', or in a sweep "
                        "file with 'byol-bench sweep' (Ray Train)")
    if rank() != 0:
        log = lambda line: None  # noqa: E731 -- the ranks train in lockstep; one progress log is enough
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.subset, cfg.test_subset, cfg.image_size, cfg.seed)
    if cfg.global_batch_size > len(data.pretrain_images):
        raise UserError(f"global batch {cfg.global_batch_size} (batch_size x workers) is larger than the "
                        f"{len(data.pretrain_images)} pretraining images; lower the batch size or raise --subset")
    backbone, feature_dim = build_backbone(cfg.backbone, data.channels, data.image_size)
    method_class = METHODS[cfg.method]
    method = method_class(backbone, feature_dim, cfg).to(device)
    if cfg.workers > 1 and cfg.sync_batchnorm:
        method = sync_batchnorm(method, device)
    evaluator = Evaluator(data, cfg, device)
    steps_per_epoch = len(data.pretrain_images) // cfg.global_batch_size
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.lr_warmup_epochs * steps_per_epoch)
    momentum_schedule = parse_momentum_schedule(cfg.momentum_schedule)
    optimizer = build_optimizer(cfg, method)
    train_step = make_train_step(cfg, method, optimizer, device)
    recipes = method_class.views if cfg.views == "method" else RECIPES[cfg.views]
    if cfg.crop_min_scale is not None:
        recipes = [replace(recipe, min_scale=cfg.crop_min_scale) for recipe in recipes]
    batches = make_batches(cfg, data, recipes, device)

    if resume is None:
        log(f"[{cfg.method}] {data.name}: {len(data.pretrain_images)} pretraining images, "
            f"{len(data.train_images)} train / {len(data.test_images)} test for evaluation, device {device}")
        baselines = evaluator.floors(method)
        state = {"epoch": 0, "history": [], "baselines": baselines, "pretrain_time_s": 0.0,
                 "step_times": [], "data_times": [], "status": "ok"}
    else:
        state = resume
        method.load_state_dict(state.pop("method"))
        optimizer.load_state_dict(state.pop("optimizer"))
        log(f"[{cfg.method}] resuming at epoch {state['epoch'] + 1}/{cfg.epochs}")

    steps_this_process = 0
    peak_memory = PeakMemory(device)  # training only: evaluation and the FLOP/s probe come after the reading
    for epoch in range(state["epoch"], cfg.epochs):
        if state["status"] != "ok":
            break
        method.train()
        epoch_start = last_log = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        clock = StepClock(device)
        tick = clock.now()
        for i, (view0, view1) in enumerate(batches(epoch)):
            got_batch = clock.now()
            step = epoch * steps_per_epoch + i
            lr = learning_rate(step, total_steps, cfg.peak_lr, warmup_steps, cfg.lr_schedule)
            tau = momentum_schedule(step, total_steps) if uses_momentum(method_class) else None
            # FLOPs are counted once, on the first step: both views forward and backward, BYOL's target forwards.
            counter = FlopCounterMode(display=False) if "flops_per_image" not in state else None
            loss_sum += train_step(view0, view1, lr, tau, flop_counter=counter)
            if counter is not None:
                state["flops_per_image"] = counter.get_total_flops() / cfg.batch_size
            done = clock.now()
            peak_memory.sample()
            steps_this_process += 1
            if steps_this_process > cfg.timing_warmup_steps:  # first steps pay for allocation and caches
                clock.add(tick, got_batch, done)
            if time.perf_counter() - last_log > PROGRESS_EVERY_S:
                log(f"[{cfg.method}] epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{steps_per_epoch} "
                    f"loss {loss_sum.item() / (i + 1):.4f} {images_per_second(cfg, clock.times()[0]) or 0:.0f} img/s")
                last_log = time.perf_counter()
            tick = clock.now()
        epoch_step_times, epoch_data_times = clock.times()
        state["step_times"] += epoch_step_times
        state["data_times"] += epoch_data_times
        state["pretrain_time_s"] += time.perf_counter() - epoch_start
        if world_size() > 1:  # the global batch's loss is the ranks' mean (and every rank sees a divergence)
            dist.all_reduce(loss_sum)
            loss_sum /= world_size()
        epoch_loss = (loss_sum / steps_per_epoch).item()
        row = {"epoch": epoch + 1, "loss": epoch_loss, "lr": lr, "momentum": tau,
               "images_per_s": images_per_second(cfg, epoch_step_times),
               "epoch_time_s": time.perf_counter() - epoch_start}
        if not math.isfinite(epoch_loss):
            state["status"] = "diverged"
        elif cfg.knn_monitor_every and (epoch + 1) % cfg.knn_monitor_every == 0:
            row["knn_top1"] = evaluator(method.backbone, with_probe=False)["knn_top1"]
        state["history"].append(row)
        state["epoch"] = epoch + 1
        log(f"[{cfg.method}] epoch {epoch + 1}/{cfg.epochs} loss {epoch_loss:.4f} lr {lr:.4f}"
            + (f" tau {tau:.4f}" if tau is not None else "")
            + (f" {row['images_per_s']:.0f} img/s" if row["images_per_s"] else "")
            + (f" knn {row['knn_top1']:.3f}" if "knn_top1" in row else ""))
        if on_epoch is not None:
            on_epoch(row, {**state, "method": method.state_dict(), "optimizer": optimizer.state_dict()})

    peak_memory_bytes = peak_memory.bytes()
    scores = {**evaluator(method.backbone), **evaluator.collapse_indicators(method)} if state["status"] == "ok" else {}
    if scores and scores["effective_rank"] < collapse_rank(cfg.projection_dim):
        state["status"] = "collapsed"
    step_times, data_times = state["step_times"], state["data_times"]
    images_per_s = images_per_second(cfg, step_times)
    peak_flops = measured_peak_flops(device, torch.bfloat16 if cfg.precision == "bf16" else torch.float32,
                                     torch.get_num_threads())
    metrics = {
        **{k: scores.get(k) for k in ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "embedding_std",
                                      "effective_rank")},
        "images_per_s": images_per_s,
        "step_time_median_s": float(torch.tensor(step_times).median()) if step_times else None,
        "data_wait_fraction": sum(data_times) / sum(step_times) if step_times else None,
        "peak_memory_bytes": peak_memory_bytes,  # of one worker (rank 0)
        "pretrain_time_s": state["pretrain_time_s"],
        "flops_per_image": state.get("flops_per_image"),
        "peak_flops_per_s": peak_flops,
        "mfu": (state["flops_per_image"] * images_per_s / (peak_flops * cfg.workers)
                if images_per_s and "flops_per_image" in state else None),
        "final_loss": state["history"][-1]["loss"] if state["history"] else None,
    }
    if scores:
        log(f"[{cfg.method}] kNN top-1 {scores['knn_top1']:.4f} (random init {state['baselines']['random_init_knn_top1']:.4f}), "
            f"linear top-1 {scores['linear_top1']:.4f}, {metrics['images_per_s'] or 0:.0f} img/s")
    return {
        "status": state["status"],
        "config": cfg.to_dict(),
        "run": {"device": str(device), "image_size": data.image_size, "channels": data.channels,
                "num_classes": data.num_classes, "pretrain_images": len(data.pretrain_images),
                "train_images": len(data.train_images), "test_images": len(data.test_images),
                "global_batch_size": cfg.global_batch_size, "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps, "peak_lr": cfg.peak_lr,
                "lr_warmup_steps": warmup_steps, "timed_steps": len(step_times),
                "probe_recipe": {**asdict(evaluator.probe), **PROBE_METHOD}},
        "history": state["history"],
        "metrics": metrics,
        "baselines": state["baselines"],
        "provenance": provenance(device, cfg.seed),
    }
