"""The trial config: every knob of one trial, with its default, its constraint and a line of help,
parsed and validated up front."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from byol_bench.errors import UserError, did_you_mean, unknown

LR_REFERENCE_BATCH = 128  # lr is given for this batch size and scaled linearly (Goyal et al.)
# compile "auto": the fewest training steps for which torch.compile pays back its compile time on a GPU
# (README, "On a GPU", has the measured per-step saving and compile time this rests on).
COMPILE_MIN_STEPS = 4000


def knob(default, help: str, *, choices: tuple[str, ...] = (), above: float | None = None,
         at_least: float | None = None):
    """A config field: its default, one line of help (``byol-bench train --help``) and its own
    constraint, checked by ``validate``: one of ``choices``, or a number ``above`` / ``at_least`` a bound.
    None (an optional knob left empty) always passes."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "above": above,
                                                        "at_least": at_least})


@dataclass(frozen=True)
class TrialConfig:
    # what is trained
    method: str = knob("byol", "the SSL method, e.g. byol, simclr, simsiam")
    backbone: str = knob("small-cnn", "small-cnn (for CPU runs), resnet18 or resnet50")
    hidden_dim: int = knob(512, "the projection head's hidden width", above=0)
    projection_dim: int = knob(128, "the projection head's output width", above=0)
    predictor_hidden_dim: int | None = knob(None, "the predictor's hidden width; null: the method's default", above=0)
    temperature: float = knob(0.5, "SimCLR's NT-Xent temperature", above=0)
    stop_gradient: bool = knob(True, "SimSiam's stop-gradient; false is the collapse ablation")
    momentum_schedule: str = knob("cosine:0.99-1.0", "the target network's EMA momentum (methods with one): "
                                  "constant:0.99, cosine:0.99-1.0, linear:0.9-0.99 or warmup:0.99@0.1")
    # data
    dataset: str = knob("fashion-mnist", "the data set, e.g. fashion-mnist, cifar10, stl10, imagefolder")
    data_dir: str | None = knob(None, "the data root, or imagefolder's <class>/<image> tree; "
                                "null: $BYOL_BENCH_DATA, else ~/.cache/byol-bench/data")
    subset: int | None = knob(None, "a seeded, stratified subset of the train split; null: all of it", above=0)
    test_subset: int | None = knob(None, "a seeded, stratified subset of the test split; null: all of it", above=0)
    image_size: int | None = knob(None, "imagefolder's decode size (null: 64); other data sets keep their native size",
                                  above=0)
    views: str = knob("method", "the view recipe: the method's own (method), or one for all: byol, simclr, simsiam")
    crop_min_scale: float | None = knob(None, "the random-resized crop's smallest area fraction, at most 1; "
                                        "null: the recipe's (0.08, SimSiam 0.2)", above=0)
    augment: str = knob("tensor", "tensor: batched on the training device; pil: lightly's transforms in workers",
                        choices=("tensor", "pil"))
    loader_workers: int = knob(1, "DataLoader workers for augment pil; 0: in the main process", at_least=0)
    # optimisation
    batch_size: int = knob(256, "images per step per worker: the global batch is batch_size x workers", above=0)
    epochs: int = knob(4, "pretraining epochs", above=0)
    optimizer: str = knob("sgd", "the pretraining optimizer", choices=("sgd", "lars"))
    lr: float = knob(0.06, f"the learning rate at batch {LR_REFERENCE_BATCH}, scaled linearly with the global batch",
                     above=0)
    lr_schedule: str = knob("cosine", "the learning rate after warm-up", choices=("cosine", "constant"))
    lr_warmup_epochs: float = knob(0.0, "epochs of linear learning-rate warm-up", at_least=0)
    weight_decay: float = knob(5e-4, "the optimizer's weight decay", at_least=0)
    sgd_momentum: float = knob(0.9, "the optimizer's momentum (SGD and LARS)", at_least=0)
    # evaluation
    knn_k: int = knob(200, "neighbours the kNN classifier weighs", above=0)
    knn_t: float = knob(0.1, "the kNN classifier's temperature", above=0)
    knn_monitor_every: int = knob(0, "kNN accuracy on the test set every N epochs; 0: never", at_least=0)
    probe_epochs: int = knob(100, "epochs of the linear probe on frozen features", above=0)
    probe_lr: float = knob(0.01, "the linear probe's learning rate", above=0)
    # execution (each speed switch is recorded with the result)
    device: str = knob("auto", "auto, cpu, cuda or cuda:N")
    precision: str = knob("fp32", "bf16: autocast for the training step (evaluation stays fp32)",
                          choices=("fp32", "bf16"))
    channels_last: bool = knob(True, "NHWC for the model and the views: the layout oneDNN and cuDNN convolve fastest")
    compile: bool | str = knob("auto", "torch.compile the training loss: true, false, or auto (on for CUDA trials "
                               f"of at least {COMPILE_MIN_STEPS} steps, where it pays back its compile time)")
    threads: int | None = knob(None, "torch intra-op threads; null: torch's default", above=0)
    workers: int = knob(1, "DDP processes of one trial (Ray Train in a sweep, else torchrun), one device each",
                        above=0)
    sync_batchnorm: bool = knob(True, "with workers > 1: BatchNorm statistics over the global batch, as on one device")
    seed: int = knob(0, "seeds the subsets, initialisation, views and probe", at_least=0)
    timing_warmup_steps: int = knob(5, "training steps left out of the throughput figures", at_least=0)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.workers

    @property
    def peak_lr(self) -> float:
        return self.lr * self.global_batch_size / LR_REFERENCE_BATCH

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KEYS = tuple(f.name for f in fields(TrialConfig))
# What a trial's floors (random-init backbone, raw pixels) depend on: trials that agree on these share them.
FLOOR_KNOBS = ("dataset", "data_dir", "subset", "test_subset", "image_size", "backbone", "seed", "knn_k", "knn_t",
               "probe_epochs", "probe_lr")


def floor_setting(cfg: TrialConfig) -> tuple:
    return tuple(getattr(cfg, key) for key in FLOOR_KNOBS)
HINTS = typing.get_type_hints(TrialConfig)
_TRUE, _FALSE, _NULL = ("true", "yes", "1"), ("false", "no", "0"), ("null", "none")
_TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "null"}


def knob_types(key: str) -> tuple[type, ...]:
    """The types knob ``key`` takes, ``NoneType`` last for an optional one (``int | None``)."""
    hint = HINTS[key]
    kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(sorted(kinds, key=lambda kind: kind is type(None)))


def _as(kind: type, value):
    """``value`` as ``kind``, or ValueError. Text reads as the type ('4', '0.5', 'true'); an int serves a float."""
    if isinstance(value, str):
        if kind is str:
            return value
        if kind is bool and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        if kind in (int, float):
            return kind(value)  # ValueError for text that is no such number
    elif isinstance(value, bool):  # an int to Python, never to a config
        if kind is bool:
            return value
    elif (isinstance(value, int) and kind in (int, float)) or (isinstance(value, float) and kind is float):
        return kind(value)
    raise ValueError(value)


def _typed(key: str, value):
    """``value`` as knob ``key``'s type, or a UserError. The one type rule for a YAML value and for a
    command-line flag's text: '4' reads as 4, 'true' as True, 'null' (or 'none') as None where None is allowed."""
    kinds = knob_types(key)
    if type(None) in kinds and (value is None or (isinstance(value, str) and value.lower() in _NULL)):
        return None
    for kind in kinds:
        try:
            return _as(kind, value)
        except ValueError:
            continue
    raise UserError(f"{key}: {value!r} is not valid; give {' or '.join(_TYPE_NAMES[kind] for kind in kinds)}")


def make_config(values: dict) -> TrialConfig:
    """Build a validated TrialConfig from a mapping of knobs (from YAML, the CLI or a sweep)."""
    for key in values:
        if key not in KEYS:
            raise UserError(f"unknown key '{key}'{did_you_mean(key, KEYS)}; valid keys: {', '.join(KEYS)}")
    cfg = TrialConfig(**{key: _typed(key, value) for key, value in values.items()})
    validate(cfg)
    return cfg


def _check_constraint(field: dataclasses.Field, value) -> None:
    """A knob's own constraint from its ``knob(...)`` metadata."""
    rule = field.metadata
    if value is None:
        return
    if rule["choices"] and value not in rule["choices"]:
        raise unknown(field.name, value, rule["choices"])
    if rule["above"] is not None and not value > rule["above"]:  # `not >` also refuses nan
        raise UserError(f"{field.name} must be above {rule['above']}, got {value}")
    if rule["at_least"] is not None and not value >= rule["at_least"]:
        raise UserError(f"{field.name} must be at least {rule['at_least']}, got {value}")


def validate(cfg: TrialConfig) -> None:
    """Each knob's own constraint, the registries' names, then the rules that tie knobs together."""
    from byol_bench.backbones import BACKBONES
    from byol_bench.data import DATASETS
    from byol_bench.methods import METHODS
    from byol_bench.schedules import parse_momentum_schedule

    for field in fields(cfg):
        _check_constraint(field, getattr(cfg, field.name))
    for kind, name, registry in (("method", cfg.method, METHODS), ("data set", cfg.dataset, DATASETS),
                                 ("backbone", cfg.backbone, BACKBONES), ("views", cfg.views, ("method", *METHODS))):
        if name not in registry:
            raise unknown(kind, name, registry)
    if isinstance(cfg.compile, str) and cfg.compile != "auto":
        raise UserError(f"compile: {cfg.compile!r} is not valid; give true, false or auto")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise UserError(f"device '{cfg.device}' is not valid; give auto, cpu, cuda or cuda:N")
    if cfg.crop_min_scale is not None and cfg.crop_min_scale > 1:
        raise UserError(f"crop_min_scale {cfg.crop_min_scale} is above 1; give an area fraction in (0, 1]")
    native_size = DATASETS[cfg.dataset].image_size
    if cfg.dataset != "imagefolder" and cfg.image_size not in (None, native_size):
        raise UserError(f"image_size {cfg.image_size}: {cfg.dataset} is used at its native {native_size} px; "
                        "leave image_size out (it resizes imagefolder data only)")
    if cfg.dataset == "imagefolder" and not cfg.data_dir:
        raise UserError("dataset imagefolder needs --data-dir (the root of a <class>/<image> tree)")
    if cfg.test_subset is not None and cfg.test_subset < cfg.workers:
        raise UserError(f"test_subset {cfg.test_subset} is smaller than workers {cfg.workers}: every worker evaluates "
                        "a share of the test images; raise test_subset")
    if cfg.subset is not None and cfg.global_batch_size > cfg.subset:
        raise UserError(f"global batch {cfg.global_batch_size} (batch_size x workers) is larger than subset {cfg.subset}; "
                        "lower the batch size or raise the subset")
    sizes = DATASETS[cfg.dataset].sizes
    if sizes is not None:  # known before loading: fail now, not minutes into a sweep
        pretrain, train, test = sizes
        pretrain = min(pretrain, cfg.subset or pretrain)
        for key, requested, available in (("subset", cfg.subset, train), ("test_subset", cfg.test_subset, test),
                                          ("global batch", cfg.global_batch_size, pretrain)):
            if requested is not None and requested > available:
                raise UserError(f"{key} {requested} is larger than {cfg.dataset}'s {available} images; give at most {available}")
    parse_momentum_schedule(cfg.momentum_schedule)


def method_reads(method: str, key: str) -> bool:
    """Whether a trial of ``method`` uses config ``key``: a key that some method lists in its ``knobs``
    is read only by the methods that list it (SimCLR has no momentum schedule)."""
    from byol_bench.methods import METHODS

    method_specific = any(key in known.knobs for known in METHODS.values())
    return not method_specific or (method in METHODS and key in METHODS[method].knobs)


def resolved_config(knobs: dict) -> dict:
    """Every knob a trial with ``knobs`` runs with: the defaults under its knobs, and the knobs its method
    never reads left empty (None) rather than a default that was never used. The sweep records this for
    every trial, and the report for a planned trial that has no row."""
    config = make_config(knobs).to_dict()
    return {key: value if method_reads(config["method"], key) else None for key, value in config.items()}


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping, or one clear UserError."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UserError(f"cannot read config file {path}: {error.strerror}; check the path") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"config file {path} must hold a mapping of keys to values, not a {type(loaded).__name__}")
    return loaded
