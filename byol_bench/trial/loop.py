"""The training loop, plain PyTorch: from the trial's state to its last epoch, a step per batch of views, a row
and a checkpoint per epoch. ``run.run_trial`` sets it up and evaluates what it trained."""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from byol_bench.config import COMPILE_MIN_STEPS, TrialConfig
from byol_bench.data.datasets import ImageData
from byol_bench.models.methods import uses_momentum
from byol_bench.models.momentum import parse_momentum_schedule
from byol_bench.trial.batches import epoch_order, make_batches, view_recipes
from byol_bench.trial.console import epoch_line
from byol_bench.trial.distributed import world_size
from byol_bench.trial.evaluate import Evaluator, OnlineProbe
from byol_bench.trial.instrument import PeakMemory, StepClock, cpu_has_amx_bf16, images_per_second, timed
from byol_bench.trial.schedules import learning_rate
from byol_bench.trial.state import Checkpoint, TrialState


PROGRESS_EVERY_S = 10.0


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@functools.lru_cache(maxsize=None)
def resolve_precision(precision: str, device: torch.device) -> str:
    """The training step's precision: as asked, or for "auto" bf16 where the device multiplies bf16 natively
    (a CUDA GPU that supports it, a CPU with AMX-BF16) and fp32 elsewhere. Cached: every step asks."""
    if precision != "auto":
        return precision
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_amx_bf16()
    return "bf16" if native else "fp32"


def memory_format(cfg: TrialConfig) -> torch.memory_format:
    return torch.channels_last if cfg.channels_last else torch.contiguous_format


def train_step(cfg: TrialConfig, model: nn.Module, optimizer: torch.optim.Optimizer, views, lr: float) -> Tensor:
    """One optimisation step on a batch of views at learning rate ``lr``; returns the loss (on the device)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    views = [view.contiguous(memory_format=memory_format(cfg)) for view in views]
    device = views[0].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(cfg.precision, device) == "bf16"):
        loss = model(*views)  # autocast around the forward pass only, as PyTorch's AMP recipe has it
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def compiles(cfg: TrialConfig, device: torch.device, total_steps: int) -> bool:
    """Whether the trial compiles its training loss: as asked, or with compile "auto" on CUDA when the
    trial is long enough to pay back the compile time."""
    if cfg.compile != "auto":
        return cfg.compile
    return device.type == "cuda" and total_steps >= COMPILE_MIN_STEPS


def counted_train_step(cfg: TrialConfig, model: nn.Module, optimizer, views, lr: float) -> tuple[Tensor, float]:
    """``train_step`` with its FLOPs counted: (loss, FLOPs per image). ``model`` must be eager: compiled
    kernels bypass the counter."""
    with FlopCounterMode(display=False) as counter:
        loss = train_step(cfg, model, optimizer, views, lr)
    return loss, counter.get_total_flops() / cfg.batch_size


class TrainingStep:
    """What every training step calls: ``model`` (the method, or its DDP wrapper) at learning rate ``lr``. The first
    step runs eager and counts its FLOPs (compiled kernels bypass the counter); where the trial compiles, the next
    step compiles the training loss and its time is compile time, not a step's."""

    def __init__(self, cfg: TrialConfig, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrialState,
                 compiling: bool):
        self.cfg, self.model, self.optimizer, self.state, self.compiling = cfg, model, optimizer, state, compiling
        self.compiled = torch.compile(model) if compiling else model

    def __call__(self, views, lr: float) -> tuple[Tensor, bool]:
        """The step's loss (on the device), and whether its time is a training step's."""
        if self.state.flops_per_image is None:  # forward and backward of every view, and the target forwards
            loss, self.state.flops_per_image = counted_train_step(self.cfg, self.model, self.optimizer, views, lr)
            return loss, True
        if self.compiling:
            loss, seconds = timed(views[0].device, lambda: train_step(self.cfg, self.compiled, self.optimizer, views, lr))
            self.state.compile_time_s, self.compiling = self.state.compile_time_s + seconds, False
            return loss, False
        return train_step(self.cfg, self.compiled, self.optimizer, views, lr), True


def pretrain(cfg: TrialConfig, method: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
             data: ImageData, state: TrialState, evaluator: Evaluator | None = None,
             online_probe: OnlineProbe | None = None, on_epoch: Callable[[dict, Checkpoint], None] | None = None,
             log: Callable[[str], None] = log_to_stderr) -> None:
    """The training loop: from epoch ``state.epoch`` to ``cfg.epochs``, each epoch's row appended to
    ``state.history`` and passed to ``on_epoch`` with a checkpoint. ``model`` is what a step calls (the
    method or its DDP wrapper). ``evaluator`` runs the kNN monitor and tests the ``online_probe``, which takes a
    step after every training step. A non-finite epoch loss ends training with ``state.status`` = "diverged"."""
    device = next(method.parameters()).device
    batches = make_batches(cfg, data, view_recipes(cfg, data.image_size), device)
    steps_per_epoch = len(data.pretrain_images) // cfg.global_batch_size
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, round(cfg.lr_warmup_epochs * steps_per_epoch)
    step = TrainingStep(cfg, model, optimizer, state, compiles(cfg, device, total_steps))
    momentum = parse_momentum_schedule(cfg.momentum_schedule) if uses_momentum(method) else None
    peak_memory, steps_here = PeakMemory(device), 0
    for epoch in range(state.epoch, cfg.epochs):
        method.train()
        clock, epoch_start, last_log = StepClock(device), time.perf_counter(), time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        probe_steps = online_probe_steps(cfg, data, online_probe, epoch)
        tick = clock.now()
        for i, views in enumerate(batches(epoch)):
            got_batch = clock.now()
            global_step = epoch * steps_per_epoch + i
            lr = learning_rate(global_step, total_steps, cfg.peak_lr, warmup_steps, cfg.lr_schedule)
            loss, timed_step = step(views, lr)
            tau = momentum(global_step, total_steps) if momentum else None
            if tau is not None:
                method.update_target(tau)
            loss_sum += loss
            done = clock.now()
            peak_memory.sample()
            probe_steps(i)  # outside the timed step: images/s is the same with the online probe or without
            steps_here += 1
            if steps_here > cfg.timing_warmup_steps and timed_step:  # the first steps pay for allocation and caches
                clock.add(tick, got_batch, done)
            if time.perf_counter() - last_log > PROGRESS_EVERY_S:
                log(step_line(cfg, epoch, i, steps_per_epoch, loss_sum, clock))
                last_log = time.perf_counter()
            tick = clock.now()
        row = end_epoch(cfg, state, clock, loss_sum / steps_per_epoch, epoch_start, lr, tau)
        state.peak_memory_bytes = max(state.peak_memory_bytes, peak_memory.bytes())
        monitor(cfg, row, state, method, evaluator, online_probe, epoch)
        log(epoch_line(cfg.method, row, cfg.epochs))
        if on_epoch is not None:  # a copy: the loop goes on changing the weights and the state
            on_epoch(row, copy.deepcopy(Checkpoint(state, method.state_dict(), optimizer.state_dict(),
                                                   online_probe.state_dict() if online_probe else None)))
        if state.status != "ok":
            break


def online_probe_steps(cfg: TrialConfig, data: ImageData, online_probe: OnlineProbe | None, epoch: int):
    """``probe_step(i)``: the online probe's step on the images of this rank's ``i``-th batch of ``epoch`` (none
    without an online probe)."""
    if online_probe is None:
        return lambda i: None
    order = epoch_order(cfg, len(data.pretrain_images), epoch)  # this rank's images, in the order the batches come

    def probe_step(i: int) -> None:
        seen = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        online_probe.train_step(data.pretrain_images[seen], data.pretrain_labels[seen])

    return probe_step


def step_line(cfg: TrialConfig, epoch: int, i: int, steps_per_epoch: int, loss_sum: Tensor, clock: StepClock) -> str:
    """A progress line inside a long epoch."""
    speed = images_per_second(cfg.global_batch_size, clock.times()[0]) or 0
    return (f"{cfg.method}: epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{steps_per_epoch} "
            f"loss {loss_sum.item() / (i + 1):.4f} {speed:.0f} img/s")


def monitor(cfg: TrialConfig, row: dict, state: TrialState, method: nn.Module, evaluator: Evaluator | None,
            online_probe: OnlineProbe | None, epoch: int) -> None:
    """The epoch's kNN monitor (every ``knn_monitor_every`` epochs) and online probe accuracy, into its ``row``."""
    if state.status != "ok":
        return
    if evaluator and cfg.knn_monitor_every and (epoch + 1) % cfg.knn_monitor_every == 0:
        row["knn_top1"] = evaluator.knn_top1(method.backbone)
    if online_probe is not None:
        row["online_probe_top1"] = evaluator.online_probe_top1(method.backbone, online_probe)


def end_epoch(cfg: TrialConfig, state: TrialState, clock: StepClock, mean_loss: Tensor, epoch_start: float,
              lr: float, tau: float | None) -> dict:
    """Adds an epoch's times and its history row to ``state``; marks a non-finite loss as diverged."""
    step_times, data_times = clock.times()
    state.step_times += step_times
    state.data_times += data_times
    state.pretrain_time_s += time.perf_counter() - epoch_start
    if world_size() > 1:  # the global batch's loss is the ranks' mean (and every rank sees a divergence)
        dist.all_reduce(mean_loss)
        mean_loss /= world_size()
    loss = mean_loss.item()
    row = {"epoch": state.epoch + 1, "loss": loss, "lr": lr, "momentum": tau,
           "images_per_s": images_per_second(cfg.global_batch_size, step_times),
           "epoch_time_s": time.perf_counter() - epoch_start}
    state.history.append(row)
    state.epoch += 1
    if not math.isfinite(loss):
        state.status = "diverged"
    return row
