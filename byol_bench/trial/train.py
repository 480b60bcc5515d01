"""One benchmark trial, top to bottom: load data, build the method, pretrain it, evaluate it.

``run_trial`` composes the steps; ``pretrain`` is the training loop alone. Both are plain PyTorch and
know nothing of Ray: the sweep passes ``on_epoch`` to report each epoch's row and checkpoint, and
``resume`` to continue from a checkpoint. Run in every process of a torch.distributed group (a DDP
trial, ``workers`` > 1), each rank trains on its share of every global batch and evaluates its share of
the images; every rank returns the same result.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from byol_bench.models.backbones import build_backbone
from byol_bench.trial.batches import epoch_order, make_batches, view_recipes
from byol_bench.config import COMPILE_MIN_STEPS, TrialConfig, listed, memory_bank_too_large
from byol_bench.data.datasets import ImageData, load_data, load_transfer
from byol_bench.trial.distributed import rank, sync_batchnorm, world_size
from byol_bench.errors import UserError
from byol_bench.trial.evaluate import PROBE_METHOD, Evaluator, OnlineProbe, collapse_rank
from byol_bench.trial.instrument import (PeakMemory, StepClock, cpu_has_amx_bf16, images_per_second, measured_peak_flops,
                                   timed)
from byol_bench.models.methods import METHODS, uses_momentum
from byol_bench.trial.console import epoch_line, result_line
from byol_bench.trial.provenance import provenance
from byol_bench.models.momentum import parse_momentum_schedule
from byol_bench.trial.schedules import learning_rate

PROGRESS_EVERY_S = 10.0


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class TrialState:
    """What a trial has done so far: checkpointed with the weights after every epoch, continued on resume."""

    floors: dict  # the random-init and raw-pixel floors, measured before training
    epoch: int = 0  # epochs done
    status: str = "ok"  # ok | diverged (| collapsed, decided after evaluation)
    history: list[dict] = field(default_factory=list)  # one row per epoch
    step_times: list[float] = field(default_factory=list)  # every timed step's seconds, data wait included
    data_times: list[float] = field(default_factory=list)  # the part of each spent getting the batch
    pretrain_time_s: float = 0.0
    flops_per_image: float | None = None  # counted on the first step
    compile_time_s: float = 0.0  # the steps that compiled the training loss (one per process that compiled)
    peak_memory_bytes: int = 0
    random_init_map: dict | None = None  # with embedding_map: Evaluator.embedding of the backbone before training
    restarts: list[int] = field(default_factory=list)  # the epochs done when each resume or retry continued


@dataclass
class Checkpoint:
    """Everything ``run_trial(resume=...)`` needs to continue a trial from the next epoch."""

    state: TrialState
    method: dict  # the method's state_dict
    optimizer: dict  # the optimizer's state_dict
    online_probe: dict | None = None  # the online probe's classifier and optimizer (OnlineProbe.state_dict)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but PyTorch sees no CUDA device here; use --device cpu")
    return torch.device(name)


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


def build_method(cfg: TrialConfig, channels: int, image_size: int, device: torch.device) -> nn.Module:
    """The method with a fresh backbone on ``device``, in the trial's memory layout; with BatchNorm over
    the global batch in a DDP trial that asks for it."""
    backbone, feature_dim = build_backbone(cfg.backbone, channels, image_size)
    method = METHODS[cfg.method](backbone, feature_dim, cfg).to(device)
    if cfg.workers > 1 and cfg.sync_batchnorm:
        method = sync_batchnorm(method, device)
    return method.to(memory_format=memory_format(cfg))


def distribute(cfg: TrialConfig, method: nn.Module, device: torch.device) -> nn.Module:
    """What the training step calls: the method itself on one worker; across ranks its DDP wrapper, which
    averages the gradients (and copies rank 0's weights to every rank as it wraps)."""
    if world_size() == 1:
        return method
    gpu = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    # With SyncBatchNorm the ranks' BatchNorm buffers agree already: nothing to broadcast.
    return DistributedDataParallel(method, device_ids=gpu, broadcast_buffers=not cfg.sync_batchnorm)


def build_optimizer(cfg: TrialConfig, method: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in method.parameters() if p.requires_grad]
    if cfg.optimizer == "lars":
        from lightly.utils.lars import LARS

        return LARS(params, lr=cfg.peak_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":  # lightly's SwAV benchmark
        return torch.optim.Adam(params, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.peak_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)


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
    compiling = compiles(cfg, device, total_steps)
    compiled = torch.compile(model) if compiling else model
    momentum = parse_momentum_schedule(cfg.momentum_schedule) if uses_momentum(method) else None
    peak_memory, steps_here = PeakMemory(device), 0
    for epoch in range(state.epoch, cfg.epochs):
        method.train()
        clock, epoch_start, last_log = StepClock(device), time.perf_counter(), time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        tick = clock.now()
        if online_probe is not None:  # this rank's batches' images, in the order the batches come
            probe_order = epoch_order(cfg, len(data.pretrain_images), epoch)
        for i, views in enumerate(batches(epoch)):
            got_batch = clock.now()
            step = epoch * steps_per_epoch + i
            lr = learning_rate(step, total_steps, cfg.peak_lr, warmup_steps, cfg.lr_schedule)
            compile_step = compiling and state.flops_per_image is not None  # compile time, not a step's time
            if state.flops_per_image is None:  # the first step: forward and backward of every view, target forwards
                loss, state.flops_per_image = counted_train_step(cfg, model, optimizer, views, lr)
            elif compile_step:
                loss, seconds = timed(device, lambda: train_step(cfg, compiled, optimizer, views, lr))
                state.compile_time_s, compiling = state.compile_time_s + seconds, False
            else:
                loss = train_step(cfg, compiled, optimizer, views, lr)
            tau = momentum(step, total_steps) if momentum else None
            if tau is not None:
                method.update_target(tau)
            loss_sum += loss
            done = clock.now()
            peak_memory.sample()
            if online_probe is not None:  # outside the timed step: images/s is the same with it or without
                seen = probe_order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                online_probe.train_step(data.pretrain_images[seen], data.pretrain_labels[seen])
            steps_here += 1
            if steps_here > cfg.timing_warmup_steps and not compile_step:  # the first steps pay for allocation and caches
                clock.add(tick, got_batch, done)
            if time.perf_counter() - last_log > PROGRESS_EVERY_S:
                speed = images_per_second(cfg.global_batch_size, clock.times()[0]) or 0
                log(f"{cfg.method}: epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{steps_per_epoch} "
                    f"loss {loss_sum.item() / (i + 1):.4f} {speed:.0f} img/s")
                last_log = time.perf_counter()
            tick = clock.now()
        row = end_epoch(cfg, state, clock, loss_sum / steps_per_epoch, epoch_start, lr, tau)
        state.peak_memory_bytes = max(state.peak_memory_bytes, peak_memory.bytes())
        if state.status == "ok" and evaluator and cfg.knn_monitor_every and (epoch + 1) % cfg.knn_monitor_every == 0:
            row["knn_top1"] = evaluator.knn_top1(method.backbone)
        if state.status == "ok" and online_probe is not None:
            row["online_probe_top1"] = evaluator.online_probe_top1(method.backbone, online_probe)
        log(epoch_line(cfg.method, row, cfg.epochs))
        if on_epoch is not None:  # a copy: the loop goes on changing the weights and the state
            on_epoch(row, copy.deepcopy(Checkpoint(state, method.state_dict(), optimizer.state_dict(),
                                                   online_probe.state_dict() if online_probe else None)))
        if state.status != "ok":
            break


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


def setup(cfg: TrialConfig) -> tuple[ImageData, nn.Module, nn.Module, torch.optim.Optimizer]:
    """A trial's data, its freshly seeded method, what the training step calls, and the optimizer."""
    if cfg.workers != world_size():
        raise UserError(f"workers {cfg.workers}: this process group has {world_size()}; run a trial with workers N "
                        "under 'torchrun --nproc-per-node N -m byol_bench.cli train --workers N ...', or in a sweep "
                        "file with 'byol-bench sweep' (Ray Train)")
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.subset, cfg.test_subset, cfg.image_size, cfg.seed,
                     validation=cfg.validation)
    if cfg.global_batch_size > len(data.pretrain_images):
        raise UserError(f"global batch {cfg.global_batch_size} (batch_size x workers) is larger than the "
                        f"{len(data.pretrain_images)} pretraining images; lower the batch size or raise --subset")
    if cfg.memory_bank_size is not None and cfg.memory_bank_size > len(data.pretrain_images):  # imagefolder's count
        raise memory_bank_too_large(cfg.memory_bank_size, len(data.pretrain_images))
    method = build_method(cfg, data.channels, data.image_size, device)
    return data, method, distribute(cfg, method, device), build_optimizer(cfg, method)


def measure_floors(cfg: TrialConfig) -> dict:
    """The floors of a trial's protocol: its random-init backbone (the trial's own initial weights, from
    the same seed) and raw pixels, evaluated in one process. Trials with the same ``FLOOR_KNOBS`` share them."""
    cfg = replace(cfg, workers=1)
    data, method, _, _ = setup(cfg)
    evaluator, _ = make_evaluator(cfg, data, next(method.parameters()).device)
    return evaluator.floors(method.backbone)


def make_evaluator(cfg: TrialConfig, data: ImageData, device: torch.device) -> tuple[Evaluator, list[str]]:
    """The trial's evaluator, with its eval_datasets loaded (a bad one fails before training), and a line per
    eval data set saying how its images were converted."""
    transfers = [load_transfer(item, data, cfg.data_dir, cfg.subset, cfg.test_subset, cfg.seed)
                 for item in listed(cfg.eval_datasets)]
    return Evaluator(data, cfg, device, [other for other, _ in transfers]), [line for _, line in transfers]


def evaluated_on(cfg: TrialConfig) -> str:
    """The images every accuracy is measured on: the test split, or the validation split held out of train."""
    return "test" if cfg.validation is None else "validation"


def restore(cfg: TrialConfig, method: nn.Module, optimizer: torch.optim.Optimizer, resume: Checkpoint,
            log: Callable[[str], None]) -> TrialState:
    """The weights and optimizer state of ``resume`` loaded; its trial state, to continue from."""
    method.load_state_dict(resume.method)
    optimizer.load_state_dict(resume.optimizer)
    state = copy.deepcopy(resume.state)
    state.restarts.append(state.epoch)
    log(f"{cfg.method}: resuming at epoch {state.epoch + 1}/{cfg.epochs}")
    return state


def run_search_trial(cfg: TrialConfig, on_epoch: Callable[[dict, Checkpoint], None],
                     resume: Checkpoint | None = None, log: Callable[[str], None] = log_to_stderr) -> TrialState:
    """A tuning search's trial: pretraining with the kNN monitor every epoch (on the validation split), and
    nothing after it: the search scores the monitor, so there are no floors and no linear probe."""
    data, method, model, optimizer = setup(cfg)
    evaluator = Evaluator(data, cfg, next(method.parameters()).device)
    state = TrialState(floors={}) if resume is None else restore(cfg, method, optimizer, resume, log)
    pretrain(cfg, method, model, optimizer, data, state, evaluator, on_epoch=on_epoch, log=log)
    return state


def run_trial(cfg: TrialConfig, floors: dict | None = None, on_epoch: Callable[[dict, Checkpoint], None] | None = None,
              resume: Checkpoint | None = None, log: Callable[[str], None] = log_to_stderr) -> dict:
    """Pretrain ``cfg.method``, then evaluate it; returns the trial's result (see docs/trials-and-metrics.md).

    ``floors`` are this trial's ``measure_floors`` when a sweep has measured them already; else the trial
    measures them before training. ``on_epoch(row, checkpoint)`` is called after every epoch with that
    epoch's history row and a ``Checkpoint`` that ``resume`` accepts to continue the trial from the next
    epoch. In a DDP trial it is called on every rank (the checkpoints are the same); only rank 0 logs.
    """
    if rank() != 0:
        log = lambda line: None  # noqa: E731 -- the ranks train in lockstep; one progress log is enough
    data, method, model, optimizer = setup(cfg)
    device = next(method.parameters()).device
    evaluator, transfers = make_evaluator(cfg, data, device)
    online_probe = evaluator.online_probe(method.backbone) if cfg.online_probe else None
    if resume is None:
        log(f"{cfg.method}: {data.name}, {len(data.pretrain_images)} pretraining images, {len(data.train_images)} "
            f"train / {len(data.test_images)} {evaluated_on(cfg)} for evaluation, device {device}")
        state = TrialState(floors=floors if floors is not None else evaluator.floors(method.backbone),
                           random_init_map=evaluator.embedding(method.backbone) if cfg.embedding_map else None)
    else:
        state = restore(cfg, method, optimizer, resume, log)
        if online_probe is not None:
            online_probe.load_state_dict(resume.online_probe)
    pretrain(cfg, method, model, optimizer, data, state, evaluator, online_probe, on_epoch=on_epoch, log=log)
    scores = evaluator(method) if state.status == "ok" else {}
    if scores and scores["effective_rank"] < collapse_rank(cfg.projection_dim):
        state.status = "collapsed"
    result = trial_result(cfg, data, device, state, scores, evaluator.probe)
    if transfers:
        result["run"]["transfer"] = "; ".join(transfers)
    if cfg.embedding_map and scores:
        result["embedding"] = {"random_init": state.random_init_map, "trained": evaluator.embedding(method.backbone)}
    log(result_line(cfg.method, result))
    return result


def trial_result(cfg: TrialConfig, data: ImageData, device: torch.device, state: TrialState, scores: dict, probe) -> dict:
    """The trial's result (see docs/trials-and-metrics.md): its config, what it resolved to, history, metrics,
    floors and provenance."""
    step_times, data_times = state.step_times, state.data_times
    images_per_s = images_per_second(cfg.global_batch_size, step_times)
    precision = resolve_precision(cfg.precision, device)
    peak_flops = measured_peak_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32,
                                     torch.get_num_threads())
    steps_per_epoch = len(data.pretrain_images) // cfg.global_batch_size
    monitored = [row["knn_top1"] for row in state.history if "knn_top1" in row]
    probed = [row["online_probe_top1"] for row in state.history if "online_probe_top1" in row]
    metrics = {
        **{k: scores.get(k) for k in ("knn_top1", "knn_top5", "linear_top1", "linear_top5", "embedding_std",
                                      "effective_rank")},  # None where not evaluated (diverged)
        **scores,  # with what the knobs add: the low-label accuracies
        # The best epoch's kNN accuracy, as lightly's benchmarks report it: only when the monitor ran every epoch.
        "knn_top1_best": max(monitored) if scores and cfg.knn_monitor_every == 1 else None,
        "online_probe_top1": probed[-1] if scores and probed else None,  # the last epoch's
        "images_per_s": images_per_s,
        "step_time_median_s": float(torch.tensor(step_times).median()) if step_times else None,
        "data_wait_fraction": sum(data_times) / sum(step_times) if step_times else None,
        "peak_memory_bytes": state.peak_memory_bytes,  # of one worker (rank 0)
        "pretrain_time_s": state.pretrain_time_s,
        "flops_per_image": state.flops_per_image,
        "compile_time_s": state.compile_time_s or None,
        "peak_flops_per_s": peak_flops,
        "mfu": (state.flops_per_image * images_per_s / (peak_flops * cfg.workers)
                if images_per_s and state.flops_per_image else None),
        "final_loss": state.history[-1]["loss"] if state.history else None,
    }
    return {
        "status": state.status,
        "config": cfg.to_dict(),
        "run": {"device": str(device), "image_size": data.image_size, "channels": data.channels,
                "num_classes": data.num_classes, "pretrain_images": len(data.pretrain_images),
                "train_images": len(data.train_images), "test_images": len(data.test_images),
                "evaluated_on": evaluated_on(cfg),
                "global_batch_size": cfg.global_batch_size, "steps_per_epoch": steps_per_epoch,
                "total_steps": cfg.epochs * steps_per_epoch, "peak_lr": cfg.peak_lr,
                "lr_warmup_steps": round(cfg.lr_warmup_epochs * steps_per_epoch), "timed_steps": len(step_times),
                "compiled": compiles(cfg, device, cfg.epochs * steps_per_epoch), "precision": precision,
                "restarts": len(state.restarts), "restarted_after_epochs": state.restarts,
                "probe_recipe": {**asdict(probe), **PROBE_METHOD}},
        "history": state.history,
        "metrics": metrics,
        "floors": state.floors,
        "provenance": provenance(device, cfg.seed),
    }
