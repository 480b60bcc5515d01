"""One benchmark trial, top to bottom: load data, build the method, pretrain it, evaluate it.

``run_trial`` composes the steps; ``loop.pretrain`` is the training loop alone. Both are plain PyTorch and
know nothing of Ray: the sweep passes ``on_epoch`` to report each epoch's row and checkpoint, and
``resume`` to continue from a checkpoint. Run in every process of a torch.distributed group (a DDP
trial, ``workers`` > 1), each rank trains on its share of every global batch and evaluates its share of
the images; every rank returns the same result.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from byol_bench.config import TrialConfig, listed, memory_bank_too_large
from byol_bench.data.datasets import ImageData, load_data, load_transfer
from byol_bench.errors import UserError
from byol_bench.models.backbones import build_backbone
from byol_bench.models.methods import METHODS
from byol_bench.trial.console import result_line
from byol_bench.trial.distributed import rank, sync_batchnorm, world_size
from byol_bench.trial.evaluate import PROBE_METHOD, Evaluator, collapse_rank
from byol_bench.trial.instrument import images_per_second, measured_peak_flops
from byol_bench.trial.loop import compiles, log_to_stderr, memory_format, pretrain, resolve_precision
from byol_bench.trial.provenance import plugins_used, provenance
from byol_bench.trial.result import Floors, Metrics, RunFacts, TrialResult, typed
from byol_bench.trial.state import Checkpoint, TrialState
from byol_bench.trial.weights import fit_to, read_weights


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but PyTorch sees no CUDA device here; use --device cpu")
    return torch.device(name)


def build_method(cfg: TrialConfig, channels: int, image_size: int, device: torch.device) -> nn.Module:
    """The method with a fresh backbone on ``device``, in the trial's memory layout; with BatchNorm over
    the global batch in a DDP trial that asks for it."""
    backbone, feature_dim = build_backbone(cfg.backbone, channels, image_size, cfg.backbone_options)
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
                     validation=cfg.validation, store_dir=cfg.store_dir, store_size=cfg.store_size)
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
              resume: Checkpoint | None = None, log: Callable[[str], None] = log_to_stderr,
              save_backbone: Callable[[nn.Module], None] | None = None) -> TrialResult:
    """Pretrain ``cfg.method``, then evaluate it; returns the trial's result (see docs/trials-and-metrics.md).

    ``floors`` are this trial's ``measure_floors`` when a sweep has measured them already; else the trial
    measures them before training. ``on_epoch(row, checkpoint)`` is called after every epoch with that
    epoch's history row and a ``Checkpoint`` that ``resume`` accepts to continue the trial from the next
    epoch. In a DDP trial it is called on every rank (the checkpoints are the same); only rank 0 logs.
    ``save_backbone(backbone)`` is called once training is done (on rank 0), where ``cfg.save_weights`` asks for it
    and the backbone was trained here.
    With ``cfg.backbone_weights`` the backbone is one trained elsewhere, loaded once its random-init floors are measured.
    """
    if rank() != 0:
        log = lambda line: None  # noqa: E731 -- the ranks train in lockstep; one progress log is enough
    data, method, model, optimizer = setup(cfg)
    device = next(method.parameters()).device
    loaded = fitted_weights(cfg, method.backbone) if cfg.backbone_weights else None  # refused before any work
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
    if loaded is not None:
        method.backbone.load_state_dict(loaded[0])
    pretrain(cfg, method, model, optimizer, data, state, evaluator, online_probe, on_epoch=on_epoch, log=log)
    if save_backbone is not None and cfg.save_weights and not loaded and rank() == 0:  # loaded: on disk already
        save_backbone(method.backbone)
    scores = evaluator(method) if state.status == "ok" else {}
    if scores and not loaded and scores["effective_rank"] < collapse_rank(cfg.projection_dim):  # a loaded backbone's
        state.status = "collapsed"  # projection head is untrained: its collapse would mean nothing
    result = trial_result(cfg, data, device, state, scores, evaluator.probe)
    result.run.transfer = "; ".join(transfers) or None
    result.provenance.backbone_weights = loaded[1] if loaded else None
    if cfg.embedding_map and scores:
        result.embedding = {"random_init": state.random_init_map, "trained": evaluator.embedding(method.backbone)}
    log(result_line(cfg.method, result))
    return result


def fitted_weights(cfg: TrialConfig, backbone: nn.Module) -> tuple[dict, dict]:
    """``cfg.backbone_weights`` read and keyed as ``backbone``'s, and where they came from (origin, SHA-256, what
    was stripped or left out to fit them)."""
    state, origin = read_weights(cfg.backbone_weights)
    state, fitting = fit_to(backbone, state, cfg.backbone_weights)
    return state, {**origin, **fitting}


def trial_result(cfg: TrialConfig, data: ImageData, device: torch.device, state: TrialState, scores: dict,
                 probe) -> TrialResult:
    """The trial's result: its config, what it resolved to, history, metrics, floors and provenance."""
    return TrialResult(status=state.status, config=cfg.to_dict(), run=run_facts(cfg, data, device, state, probe),
                       history=state.history, metrics=measured(cfg, device, state, scores),
                       floors=typed(Floors, state.floors),
                       provenance=provenance(device, cfg.seed, plugins_used(cfg.method, cfg.backbone)))


def run_facts(cfg: TrialConfig, data: ImageData, device: torch.device, state: TrialState, probe) -> RunFacts:
    steps_per_epoch = len(data.pretrain_images) // cfg.global_batch_size
    return RunFacts(
        device=str(device), precision=resolve_precision(cfg.precision, device), image_size=data.image_size,
        channels=data.channels, num_classes=data.num_classes, pretrain_images=len(data.pretrain_images),
        train_images=len(data.train_images), test_images=len(data.test_images), evaluated_on=evaluated_on(cfg),
        global_batch_size=cfg.global_batch_size, steps_per_epoch=steps_per_epoch,
        total_steps=cfg.epochs * steps_per_epoch, peak_lr=cfg.peak_lr,
        lr_warmup_steps=round(cfg.lr_warmup_epochs * steps_per_epoch), timed_steps=len(state.step_times),
        compiled=compiles(cfg, device, cfg.epochs * steps_per_epoch), restarts=len(state.restarts),
        restarted_after_epochs=state.restarts, probe_recipe={**asdict(probe), **PROBE_METHOD})


def measured(cfg: TrialConfig, device: torch.device, state: TrialState, scores: dict) -> Metrics:
    """The metrics: ``scores`` (the evaluation's; empty where it did not run) and the training's own."""
    step_times, data_times = state.step_times, state.data_times
    images_per_s = images_per_second(cfg.global_batch_size, step_times)
    dtype = torch.bfloat16 if resolve_precision(cfg.precision, device) == "bf16" else torch.float32
    peak_flops = measured_peak_flops(device, dtype, torch.get_num_threads())
    monitored = [row["knn_top1"] for row in state.history if "knn_top1" in row]
    probed = [row["online_probe_top1"] for row in state.history if "online_probe_top1" in row]
    metrics = typed(Metrics, scores)
    # The best epoch's kNN accuracy, as lightly's benchmarks report it: only when the monitor ran every epoch.
    metrics.knn_top1_best = max(monitored) if scores and cfg.knn_monitor_every == 1 else None
    metrics.online_probe_top1 = probed[-1] if scores and probed else None
    metrics.images_per_s = images_per_s
    metrics.step_time_median_s = float(torch.tensor(step_times).median()) if step_times else None
    metrics.data_wait_fraction = sum(data_times) / sum(step_times) if step_times else None
    metrics.peak_memory_bytes = state.peak_memory_bytes
    metrics.pretrain_time_s = state.pretrain_time_s
    metrics.flops_per_image = state.flops_per_image
    metrics.compile_time_s = state.compile_time_s or None
    metrics.peak_flops_per_s = peak_flops
    metrics.mfu = (state.flops_per_image * images_per_s / (peak_flops * cfg.workers)
                   if images_per_s and state.flops_per_image else None)
    metrics.final_loss = state.history[-1]["loss"] if state.history else None
    return metrics
