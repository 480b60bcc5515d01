"""What a trial has done so far and what continues it: saved after every epoch, loaded on resume."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


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


def load_checkpoint(path: Path) -> Checkpoint:
    """A ``Checkpoint`` that ``torch.save`` wrote to ``path``, read without running code: tensors, plain values and
    these two classes only (a file that holds anything else is refused, never unpickled)."""
    with torch.serialization.safe_globals([Checkpoint, TrialState]):
        return torch.load(path, weights_only=True)
