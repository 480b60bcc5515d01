"""A sweep file: a YAML grid of trials, loaded, validated and expanded before anything runs (no Ray here).

The sweep file names fixed trial knobs (``trial``), the crossed ``axes``, per-method knobs
(``method_overrides``) and per-backbone ones (``backbone_overrides``), the ``resources`` of a trial's worker, concurrency and retries, and optional
published ``anchors``. ``expand`` turns it into planned trials; ``on_ray.sweep`` runs them on Ray Tune.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from byol_bench.config import KEYS, TrialConfig, is_key, make_config, method_reads, read_yaml, resolved_config
from byol_bench.errors import UserError, did_you_mean
from byol_bench.models.methods import METHODS
from byol_bench.protocol import setting_label

SWEEP_KEYS = ("name", "description", "trial", "method_overrides", "backbone_overrides", "axes", "resources",
              "max_concurrent", "max_failures", "anchors", "search")


@dataclass
class Sweep:
    name: str
    path: Path
    source: str  # the sweep file as given
    trial: dict  # knobs shared by every trial
    axes: dict[str, list]
    method_overrides: dict[str, dict] = field(default_factory=dict)  # e.g. each method's own head sizes
    backbone_overrides: dict[str, dict] = field(default_factory=dict)  # e.g. a ViT's patch size and optimizer
    cpus_per_worker: float = 1.0
    gpus_per_trial: float = 0.0  # resources.gpu: a fraction or 1 for one worker, G > 1 for G DDP workers
    max_concurrent: int | None = None
    max_failures: int = 1
    anchors: list[dict] = field(default_factory=list)
    description: str = ""
    search: dict = field(default_factory=dict)  # a tuning search's section, as given (``search.load_tune`` checks it)

    @property
    def gpus_per_worker(self) -> float:
        """At most 1: a trial asking for G > 1 GPUs runs as G DDP workers of one GPU each."""
        return min(self.gpus_per_trial, 1.0)

    @property
    def resources(self) -> dict:
        """What each worker of a trial holds (a one-worker trial holds it itself)."""
        return {"cpu": self.cpus_per_worker, "gpu": self.gpus_per_worker}


@dataclass(frozen=True)
class PlannedTrial:
    trial_id: str
    knobs: dict  # exactly the keys this trial sets (method-specific keys only where the method reads them)

    @property
    def workers(self) -> int:
        return self.knobs.get("workers", 1)

    @property
    def resolved(self) -> dict:
        """Every knob this trial ran with, defaults included (those its method never reads left empty)."""
        return resolved_config(self.knobs)


def _number(where: str, value, low: float, integer: bool = False):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < low:
        raise UserError(f"{where}: {value!r} is not valid; give a {'whole ' if integer else ''}number >= {low}")
    return value


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file (the grid itself is validated by ``expand``)."""
    raw = read_yaml(path)
    for key in raw:
        if key not in SWEEP_KEYS:
            raise UserError(f"{path}: unknown key '{key}'{did_you_mean(key, SWEEP_KEYS)}; valid keys: {', '.join(SWEEP_KEYS)}")
    name = raw.get("name") or Path(path).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"{path}: name {name!r} must be letters, digits, '-' or '_' (it names the results folder)")
    trial = raw.get("trial") or {}
    axes = raw.get("axes") or {}
    if not isinstance(trial, dict) or not isinstance(axes, dict):
        raise UserError(f"{path}: 'trial' and 'axes' must be mappings of config keys")
    if not axes:
        raise UserError(f"{path}: 'axes' is empty; list at least one knob to sweep, e.g. 'method: [byol, simclr]'")
    for key, values in axes.items():
        if not is_key(key):
            raise UserError(f"{path}: axes: unknown key '{key}'{did_you_mean(key, KEYS)}")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: axes.{key} must be a non-empty list, e.g. '{key}: [{values!r}]'")
    overrides = _overrides(path, raw, "method_overrides", "method", METHODS, axes, "{byol: {hidden_dim: 1024}}")
    backbone_overrides = _overrides(path, raw, "backbone_overrides", "backbone", axes.get("backbone", []), axes,
                                    "{'timm:vit_tiny_patch16_224': {backbone_options: {patch_size: 4}}}")
    overlap = set(trial) & set(axes)
    if overlap:
        raise UserError(f"{path}: {', '.join(sorted(overlap))} set both in 'trial' and in 'axes'; keep one")
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
        raise UserError(f"{path}: resources must be a mapping with 'cpu' and/or 'gpu', e.g. {{cpu: 1, gpu: 0.5}}")
    sweep = Sweep(
        name=name, path=Path(path), source=Path(path).read_text(), trial=trial, axes=axes, method_overrides=overrides,
        backbone_overrides=backbone_overrides,
        cpus_per_worker=_number("resources.cpu", resources.get("cpu", 1), 0),
        gpus_per_trial=_number("resources.gpu", resources.get("gpu", 0), 0),
        max_concurrent=None if raw.get("max_concurrent") is None else _number("max_concurrent", raw["max_concurrent"], 1, integer=True),
        max_failures=_number("max_failures", raw.get("max_failures", 1), 0, integer=True),
        anchors=raw.get("anchors") or [], description=raw.get("description") or "", search=raw.get("search") or {},
    )
    if sweep.gpus_per_trial > 1:
        if sweep.gpus_per_trial != int(sweep.gpus_per_trial):
            raise UserError(f"{path}: resources.gpu {sweep.gpus_per_trial}: above 1 GPU a trial needs a whole number")
        if "workers" in trial or "workers" in axes or any("workers" in knobs for knobs in overrides.values()):
            raise UserError(f"{path}: resources.gpu {sweep.gpus_per_trial:g} already means {sweep.gpus_per_trial:g} "
                            "DDP workers of one GPU each; set either it or 'workers' (with resources.gpu: 1)")
    return sweep


def _overrides(path, raw: dict, key: str, kind: str, known, axes: dict, example: str) -> dict[str, dict]:
    """A sweep file's per-method (or per-backbone: one of the backbone axis's values) knobs, checked."""
    overrides = raw.get(key) or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise UserError(f"{path}: {key} must map a {kind} to its knobs, e.g. {example}")
    for name, knobs in overrides.items():
        if name not in known:
            where = "registered" if kind == "method" else "on the backbone axis"
            raise UserError(f"{path}: {key}: '{name}' is not a {kind} {where}{did_you_mean(name, known)}")
        for knob in knobs:
            if not is_key(knob) or knob in axes:
                raise UserError(f"{path}: {key}.{name}.{knob}: not a trial key, or already an axis")
    return overrides


def expand(sweep: Sweep) -> list[PlannedTrial]:
    """The grid's meaningful trials: a method-specific axis (momentum_schedule, temperature, ...) is
    crossed only with the methods that read it, so SimCLR runs once, not once per momentum schedule."""
    planned, seen = [], set()
    for combination in itertools.product(*sweep.axes.values()):
        knobs = {**sweep.trial, **dict(zip(sweep.axes, combination))}
        method = knobs.get("method", TrialConfig.method)
        knobs.update(sweep.method_overrides.get(method, {}))
        knobs.update(sweep.backbone_overrides.get(knobs.get("backbone"), {}))
        knobs = {key: value for key, value in knobs.items() if method_reads(method, key)}
        if sweep.gpus_per_trial:
            knobs.setdefault("device", "cuda")
        if sweep.gpus_per_trial > 1:
            knobs["workers"] = int(sweep.gpus_per_trial)
        knobs.setdefault("threads", max(1, int(sweep.cpus_per_worker)))
        trial_id = setting_label({key: knobs[key] for key in sweep.axes if key in knobs})
        if trial_id in seen:
            continue
        seen.add(trial_id)
        try:
            make_config(knobs)
        except UserError as error:
            raise UserError(f"trial {trial_id}: {error}") from None
        trial = PlannedTrial(trial_id, knobs)
        if trial.workers > 1 and 0 < sweep.gpus_per_worker < 1:
            raise UserError(f"trial {trial_id}: {trial.workers} DDP workers cannot share fractions of GPUs "
                            f"(resources.gpu {sweep.gpus_per_worker:g}; NCCL refuses one GPU twice); give each worker gpu: 1")
        planned.append(trial)
    return planned


def run_order(planned: list[PlannedTrial]) -> list[PlannedTrial]:
    """The order Tune starts the trials in: each method at each batch size in turn (the methods first, then their
    next batch size; then the second trial of each), so that a sweep's first minutes measure the speed of every
    kind of trial (the time-left estimate rests on it) and a first result of each method comes early."""
    kinds: dict[tuple, list[PlannedTrial]] = {}
    for trial in planned:
        kinds.setdefault((trial.knobs.get("method", TrialConfig.method), trial.knobs.get("batch_size")), []).append(trial)
    methods = list(dict.fromkeys(method for method, _ in kinds))
    nth = {kind: [other for other in kinds if other[0] == kind[0]].index(kind) for kind in kinds}
    ordered = sorted(kinds, key=lambda kind: (nth[kind], methods.index(kind[0])))
    return [trial for turn in itertools.zip_longest(*(kinds[kind] for kind in ordered)) for trial in turn if trial]


def describe(sweep: Sweep, planned: list[PlannedTrial]) -> str:
    """The expanded trial table and the resources it asks for (``--dry-run``)."""
    axes = list(sweep.axes)
    widths = {a: max(len(a), *(len(str(p.knobs.get(a, "-"))) for p in planned)) for a in axes}
    workers = sorted({p.workers for p in planned})
    lines = [f"sweep {sweep.name}: {len(planned)} trials of {'/'.join(map(str, workers))} worker(s), each worker "
             f"{sweep.cpus_per_worker:g} CPU and {sweep.gpus_per_worker:g} GPU; fixed: "
             + ", ".join(f"{k}={v}" for k, v in sweep.trial.items())]
    lines.append("  ".join(a.ljust(widths[a]) for a in axes))
    lines += ["  ".join(str(p.knobs.get(a, "-")).ljust(widths[a]) for a in axes) for p in planned]
    total_workers = sum(p.workers for p in planned)
    lines.append(f"in all: {sweep.cpus_per_worker * total_workers:g} CPU-trials, {sweep.gpus_per_worker * total_workers:g} "
                 f"GPU-trials; at most {sweep.max_concurrent or 'as many as fit'} at once, {sweep.max_failures} retries each")
    return "\n".join(lines)
