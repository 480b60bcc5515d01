"""A trial's result, typed: what ``run_trial`` returns, the JSON it is written as and read back from, and the
columns it gives the tables. Every part of the suite that writes or reads a result goes through this module.

Schema versions: 1 (no ``schema_version`` key; the floors under ``baselines``), 2 (``floors``, ``schema_version``).
A version-1 file reads as version 2.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

SCHEMA_VERSION = 2
COLUMN = {"column": True}  # a field's metadata: the field is a column of the trial table


@dataclass
class Metrics:
    """What the trial measured; None where it was not (a diverged trial has no accuracies)."""
    knn_top1: float | None = None
    knn_top5: float | None = None
    knn_top1_best: float | None = None  # the best epoch's, only when the kNN monitor ran every epoch
    linear_top1: float | None = None
    linear_top5: float | None = None
    embedding_std: float | None = None
    effective_rank: float | None = None
    online_probe_top1: float | None = None  # the last epoch's
    images_per_s: float | None = None
    step_time_median_s: float | None = None
    data_wait_fraction: float | None = None
    peak_memory_bytes: int | None = None  # of one worker (rank 0)
    pretrain_time_s: float | None = None
    flops_per_image: float | None = None
    compile_time_s: float | None = None
    peak_flops_per_s: float | None = None
    mfu: float | None = None
    final_loss: float | None = None
    extra: dict[str, float | None] = field(default_factory=dict)  # what a trial's knobs add: low-label, transfer


@dataclass
class Floors:
    """The floors the trial's numbers are read against: its own random-init backbone, and raw pixels."""
    random_init_knn_top1: float | None = None
    random_init_knn_top5: float | None = None
    random_init_linear_top1: float | None = None
    random_init_linear_top5: float | None = None
    raw_pixels_knn_top1: float | None = None  # images up to 32 px only
    raw_pixels_knn_top5: float | None = None
    extra: dict[str, float | None] = field(default_factory=dict)  # the low-label and transfer floors


@dataclass
class RunFacts:
    """What the trial's knobs resolved to (``auto`` device and precision, batch, steps, learning rate)."""
    device: str | None = field(default=None, metadata=COLUMN)
    precision: str | None = field(default=None, metadata=COLUMN)
    image_size: int | None = None
    channels: int | None = None
    num_classes: int | None = None
    pretrain_images: int | None = field(default=None, metadata=COLUMN)
    train_images: int | None = field(default=None, metadata=COLUMN)
    test_images: int | None = field(default=None, metadata=COLUMN)
    evaluated_on: str | None = None
    global_batch_size: int | None = field(default=None, metadata=COLUMN)
    steps_per_epoch: int | None = None
    total_steps: int | None = field(default=None, metadata=COLUMN)
    peak_lr: float | None = field(default=None, metadata=COLUMN)
    lr_warmup_steps: int | None = None
    timed_steps: int | None = None
    compiled: bool | None = None
    restarts: int | None = field(default=None, metadata=COLUMN)
    restarted_after_epochs: list[int] = field(default_factory=list)
    probe_recipe: dict = field(default_factory=dict)
    transfer: str | None = field(default=None, metadata=COLUMN)  # the transfer data sets, as loaded


@dataclass
class Provenance:
    """Where and with what the trial ran."""
    python: str | None = None
    torch: str | None = field(default=None, metadata=COLUMN)
    torchvision: str | None = None
    lightly: str | None = field(default=None, metadata=COLUMN)
    ray: str | None = None
    byol_bench: str | None = None
    git_revision: str | None = field(default=None, metadata=COLUMN)
    device: str | None = None
    device_name: str | None = field(default=None, metadata=COLUMN)
    cuda: str | None = None
    threads: int | None = field(default=None, metadata=COLUMN)
    hostname: str | None = field(default=None, metadata=COLUMN)
    platform: str | None = None
    seed: int | None = None
    time: str | None = field(default=None, metadata=COLUMN)
    # the method and backbone that are not built in -> their package and version ("method tico": "byol-bench-tico 0.1.0")
    plugins: dict[str, str] = field(default_factory=dict)
    # with backbone_weights: where they came from (source, origin or SHA-256), the prefix stripped, the keys left out
    backbone_weights: dict | None = None


@dataclass
class TrialResult:
    """One trial's result (docs/trials-and-metrics.md): status, config, run facts, per-epoch history, metrics, floors,
    provenance, and the embedding maps when asked for."""
    status: str  # ok, diverged or collapsed
    config: dict  # every knob, defaults filled in
    run: RunFacts = field(default_factory=RunFacts)
    history: list[dict] = field(default_factory=list)  # one row per epoch
    metrics: Metrics = field(default_factory=Metrics)
    floors: Floors = field(default_factory=Floors)
    provenance: Provenance = field(default_factory=Provenance)
    embedding: dict | None = None  # map name -> {"algorithm", "points", "labels"}
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict:
        """The JSON-shaped dict: each part's ``extra`` merged into it, as the files have always held it."""
        whole = asdict(self)
        for part in ("metrics", "floors"):
            whole[part].update(whole[part].pop("extra"))
        return whole

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)

    @classmethod
    def from_dict(cls, whole: dict) -> TrialResult:
        """A result from its JSON-shaped dict, any schema version; keys a part does not know are kept in its
        ``extra`` (metrics, floors) or dropped (written by a later version)."""
        return cls(status=whole["status"], config=whole["config"], run=typed(RunFacts, whole.get("run")),
                   history=whole.get("history") or [], metrics=typed(Metrics, whole.get("metrics")),
                   floors=typed(Floors, whole.get("floors", whole.get("baselines"))),
                   provenance=typed(Provenance, whole.get("provenance")), embedding=whole.get("embedding"))

    @classmethod
    def from_json(cls, text: str) -> TrialResult:
        return cls.from_dict(json.loads(text))


def typed(part: type, values: dict | None):
    """A part of the result (``Metrics``, ``Floors``, ``RunFacts``, ``Provenance``) from its dict."""
    known = {f.name for f in fields(part)} - {"extra"}
    values = values or {}
    typed = part(**{key: value for key, value in values.items() if key in known})
    if hasattr(typed, "extra"):
        typed.extra = {key: value for key, value in values.items() if key not in known}
    return typed


def columns(part: type) -> tuple[str, ...]:
    """The trial table's columns that ``part`` gives: all of its fields for metrics and floors, the fields marked
    ``COLUMN`` for run facts and provenance. (An ``extra`` key is a column too, named after the key.)"""
    every = "column" not in {key for f in fields(part) for key in f.metadata}
    return tuple(f.name for f in fields(part) if f.name != "extra" and (every or f.metadata.get("column")))


def values(part) -> dict:
    """``part``'s values by column (its ``extra`` keys included)."""
    return {**{name: getattr(part, name) for name in columns(type(part))}, **getattr(part, "extra", {})}
