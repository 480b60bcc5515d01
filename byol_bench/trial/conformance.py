"""The checks every built-in method passes, for any method by name: ``byol-bench check-method NAME``, and
``check_method(NAME)`` from a plug-in's own pytest (``assert all(check.passed for check in check_method("tico"))``).

Each check trains a tiny trial of the method on synthetic images, one thread, on the CPU:

- interface: the class implements ``models.method.Method`` (views, config keys, options, the optional parts);
- views: a trial draws the views the method declares, and its forward takes them and returns one finite loss;
- loss falls: ten SGD steps on one fixed batch lower the loss;
- target: a target network (where the method reads a momentum schedule) gets no gradient, is left alone by the
  optimizer, and moves only by ``update_target``, as an EMA of the online network;
- resume: a trial resumed from its first epoch's checkpoint ends with bit-identical weights;
- ddp: the global batch split over two gloo ranks trains the weights of one worker with the whole batch.
"""

from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from byol_bench.config import TrialConfig, make_config
from byol_bench.models.method import interface_problems
from byol_bench.models.methods import METHODS, multi_crop, uses_momentum

# A trial small enough to check in seconds: synthetic 16 px images, heads of 64/32, a short probe.
TINY_TRIAL = dict(dataset="synthetic", image_size=16, subset=128, test_subset=64, batch_size=32, epochs=2,
                  probe_epochs=2, hidden_dim=64, projection_dim=32, knn_k=20, threads=1, timing_warmup_steps=0,
                  precision="fp32", save_weights=False)
# For a method with a memory (a queue, a support set), prototypes or local crops: sizes that fit the tiny trial.
TINY_METHOD_KNOBS = {"memory_bank_size": 64, "prototypes": 64, "local_crops": 2}
DDP_TOLERANCE = dict(rtol=1e-4, atol=5e-3)  # float noise of two ranks' reordered sums (tests/test_distributed.py)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str  # what was measured, or why it failed

    def __str__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"


def tiny_config(name: str, **knobs) -> TrialConfig:
    """A tiny trial of method ``name``: its own knobs sized for it where it reads them."""
    own = {key: value for key, value in TINY_METHOD_KNOBS.items() if key in METHODS[name].config_keys}
    return make_config({**TINY_TRIAL, "method": name, **own, **knobs})


def check_method(name: str, log: Callable[[str], None] = lambda line: None) -> list[Check]:
    """Every check on method ``name`` (a built-in or a plug-in's), each logged as it ends."""
    checks = [_interface(name)]
    if checks[0].passed:
        cfg = tiny_config(name)
        for check in (check_views, check_loss_falls, check_target, check_resume, check_ddp):
            checks.append(_guarded(check, cfg))
            log(str(checks[-1]))
    return checks


def _guarded(check, cfg: TrialConfig) -> Check:
    try:
        return check(cfg)
    except Exception as error:  # a plug-in's bug is a failed check, named, not a crash of the checker
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return Check(check.__name__.removeprefix("check_").replace("_", " "), False, f"raised {type(error).__name__}: {message}")


def _interface(name: str) -> Check:
    problems = interface_problems(METHODS[name])
    return Check("interface", not problems, "; ".join(problems) or "implements models.method.Method")


def built(cfg: TrialConfig):
    """The method of ``cfg``'s trial, built as a trial builds it (seeded), on the CPU."""
    from byol_bench.trial.run import build_method

    torch.manual_seed(cfg.seed)
    return build_method(cfg, 3, cfg.image_size, torch.device("cpu"))


def fixed_views(cfg: TrialConfig, seed: int = 0, images: int = 32) -> list[torch.Tensor]:
    """One seeded batch of ``images`` images' views, those ``cfg``'s method trains on (local crops included)."""
    from byol_bench.data.datasets import make_synthetic
    from byol_bench.trial.batches import view_recipes
    from byol_bench.trial.views import TensorViews

    batch, _ = make_synthetic(images, seed=seed, image_size=cfg.image_size)
    views = TensorViews(view_recipes(cfg, cfg.image_size), cfg.image_size, 3, (0.5,) * 3, (0.25,) * 3, seed=seed,
                        device="cpu")
    return views(batch)


def check_views(cfg: TrialConfig) -> Check:
    method, views = built(cfg), fixed_views(cfg)
    local = cfg.local_crops if multi_crop(METHODS[cfg.method]) else 0
    sizes = [view.shape[-1] for view in views]
    expected = [cfg.image_size] * 2 + [cfg.local_crop_size or cfg.image_size // 2] * local
    loss = method(*views)
    passed = sizes == expected and loss.dim() == 0 and bool(torch.isfinite(loss))
    return Check("views", passed, f"{len(views)} views of {sizes} px (declared: {expected}), loss {loss.item():.4f}")


def loss_curve(cfg: TrialConfig, steps: int = 10) -> list[float]:
    """The losses of ``steps`` SGD steps (lr 0.05, momentum 0.9) on one fixed batch, the target following at 0.99."""
    method, views = built(cfg), fixed_views(cfg)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = method(*views)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if uses_momentum(method):
            method.update_target(0.99)
        losses.append(loss.item())
    return losses


def check_loss_falls(cfg: TrialConfig) -> Check:
    losses = loss_curve(cfg)
    # A memory (a queue, a support set) starts with random entries: the loss is read from the second step on.
    first = 1 if "memory_bank_size" in METHODS[cfg.method].config_keys else 0
    return Check("loss falls", losses[-1] < losses[first] - 0.05,
                 f"{losses[first]:.4f} -> {losses[-1]:.4f} over {len(losses) - first} steps on one batch (needs -0.05)")


def check_target(cfg: TrialConfig) -> Check:
    method = built(cfg)
    if not uses_momentum(method):
        return Check("target", True, "no target network (the method reads no momentum schedule)")
    frozen = [p for p in method.parameters() if not p.requires_grad]
    before = [p.detach().clone() for p in frozen]
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method(*fixed_views(cfg)).backward()
    optimizer.step()
    if not frozen:
        return Check("target", False, "reads momentum_schedule, but no parameter is frozen (requires_grad False)")
    if any(p.grad is not None for p in frozen) or not all(torch.equal(p, b) for p, b in zip(frozen, before)):
        return Check("target", False, "the target network got a gradient or was moved by the optimizer step")
    method.update_target(0.9)
    moved = sum(not torch.equal(p, b) for p, b in zip(frozen, before))
    return Check("target", moved > 0, f"no gradient, untouched by the step; update_target(0.9) moved {moved} of "
                                      f"{len(frozen)} target tensors")


def check_resume(cfg: TrialConfig) -> Check:
    from byol_bench.trial.run import run_trial

    checkpoints = []
    full = run_trial(cfg, on_epoch=lambda row, checkpoint: checkpoints.append(checkpoint), log=lambda line: None)
    whole = checkpoints[-1].method
    run_trial(cfg, resume=checkpoints[0], on_epoch=lambda row, checkpoint: checkpoints.append(checkpoint),
              log=lambda line: None)
    resumed = checkpoints[-1].method
    differ = [key for key in whole if not torch.equal(whole[key], resumed[key])]
    return Check("resume", not differ and whole.keys() == resumed.keys(),
                 f"resumed from epoch 1 of {cfg.epochs}: "
                 + (f"{len(differ)} tensors differ, first {differ[0]}" if differ else f"all {len(whole)} tensors "
                    f"bit-identical (final loss {full.history[-1]['loss']:.4f})"))


def check_ddp(cfg: TrialConfig) -> Check:
    import torch.multiprocessing as mp

    # Two steps of a global batch of 64 at 32 px, NCHW: the memory layout is not under test, and NHWC convolutions'
    # float noise would blur the difference a missing gather makes.
    cfg = make_config({**cfg.to_dict(), "epochs": 1, "batch_size": 64, "image_size": 32, "channels_last": False})
    one = _pretrained_weights(cfg)
    with tempfile.TemporaryDirectory() as folder:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        knobs = {**cfg.to_dict(), "batch_size": cfg.batch_size // 2, "workers": 2}
        mp.spawn(_rank, args=(port, knobs, folder), nprocs=2)
        ranks = [torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(2)]
    worst, where = 0.0, ""
    for key, weight in one.items():
        gap = max((rank[key].float() - weight.float()).abs().max().item() for rank in ranks)
        if gap > worst:
            worst, where = gap, key
    close = all(torch.allclose(rank[key].float(), weight.float(), **DDP_TOLERANCE)
                for rank in ranks for key, weight in one.items())
    same = all(torch.equal(ranks[0][key], ranks[1][key]) for key in one)
    return Check("ddp", close and same, f"two gloo ranks vs one worker: largest difference {worst:.2e} ({where}); "
                                        f"the ranks {'agree' if same else 'DISAGREE'}")


def _pretrained_weights(cfg: TrialConfig) -> dict[str, torch.Tensor]:
    """The method's weights after pretraining ``cfg`` (no floors, no evaluation)."""
    from byol_bench.trial.loop import pretrain
    from byol_bench.trial.run import setup
    from byol_bench.trial.state import TrialState

    data, method, model, optimizer = setup(cfg)
    pretrain(cfg, method, model, optimizer, data, TrialState(floors={}), log=lambda line: None)
    return {key: value.detach().clone() for key, value in method.state_dict().items()}


def _rank(rank: int, port: int, knobs: dict, folder: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.save(_pretrained_weights(make_config(knobs)), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
