"""The trial config: every knob of one trial, with its default, parsed and validated up front."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from byol_bench.errors import UserError, did_you_mean, unknown

LR_REFERENCE_BATCH = 128  # lr is given for this batch size and scaled linearly (Goyal et al.)


@dataclass(frozen=True)
class TrialConfig:
    # what is trained
    method: str = "byol"
    backbone: str = "small-cnn"
    hidden_dim: int = 512
    projection_dim: int = 128
    predictor_hidden_dim: int | None = None  # None: the method's default
    temperature: float = 0.5  # SimCLR's NT-Xent
    stop_gradient: bool = True  # SimSiam; False is the collapse ablation
    momentum_schedule: str = "cosine:0.99-1.0"  # methods with a target network
    # data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None  # seeded stratified subset of the train split
    test_subset: int | None = None
    image_size: int | None = None  # imagefolder's decode size (default 64); other data sets keep their native size
    views: str = "method"  # the method's own view recipe, or one recipe for all: byol | simclr | simsiam
    crop_min_scale: float | None = None  # RandomResizedCrop's smallest area; None: the recipe's (0.08, SimSiam 0.2)
    augment: str = "tensor"  # tensor (batched, on the device) | pil (lightly's transforms in workers)
    loader_workers: int = 1  # DataLoader workers for augment=pil (0: in the main process)
    # optimisation
    batch_size: int = 256  # per worker: the global batch is batch_size x workers
    epochs: int = 4
    optimizer: str = "sgd"  # sgd | lars
    lr: float = 0.06  # at batch 128, scaled linearly with the batch size
    lr_schedule: str = "cosine"  # cosine | constant, after warm-up
    lr_warmup_epochs: float = 0.0
    weight_decay: float = 5e-4
    sgd_momentum: float = 0.9
    # evaluation
    knn_k: int = 200
    knn_t: float = 0.1
    knn_monitor_every: int = 0  # kNN on the test set every N epochs; 0 = off
    probe_epochs: int = 100
    probe_lr: float = 0.01
    # execution (each speed switch is recorded with the result)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast for the training step; evaluation stays fp32)
    # NHWC for the model and the views: the layout oneDNN and cuDNN convolve fastest (fp32 on 2 CPU cores: 1.3x)
    channels_last: bool = True
    compile: bool = False  # torch.compile the training loss
    threads: int | None = None  # torch intra-op threads; None: torch's default
    workers: int = 1  # DDP processes of one trial (Ray Train, in a sweep), one device each
    sync_batchnorm: bool = True  # with workers > 1: BatchNorm statistics over the global batch, as on one device
    seed: int = 0
    timing_warmup_steps: int = 5  # steps left out of the throughput figures

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.workers

    @property
    def peak_lr(self) -> float:
        return self.lr * self.global_batch_size / LR_REFERENCE_BATCH

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KEYS = tuple(f.name for f in fields(TrialConfig))
HINTS = typing.get_type_hints(TrialConfig)
_POSITIVE = ("crop_min_scale", "hidden_dim", "projection_dim", "predictor_hidden_dim", "batch_size", "epochs", "subset", "test_subset",
             "image_size", "knn_k", "probe_epochs", "threads", "workers", "temperature", "knn_t", "lr", "probe_lr")
_NON_NEGATIVE = ("loader_workers", "lr_warmup_epochs", "weight_decay", "sgd_momentum", "knn_monitor_every", "seed", "timing_warmup_steps")
_CHOICES = {"optimizer": ("sgd", "lars"), "lr_schedule": ("cosine", "constant"), "augment": ("tensor", "pil"),
            "precision": ("fp32", "bf16")}


def _check_type(key: str, value, hint):
    """Accept ``value`` for the annotation ``hint`` (ints for floats too), or raise a UserError."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return value
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool) and isinstance(value, kind):
            return value
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise UserError(f"{key}: {value!r} is not a valid value; give {names}")


def make_config(values: dict) -> TrialConfig:
    """Build a validated TrialConfig from a mapping of knobs (from YAML, the CLI or a sweep)."""
    for key in values:
        if key not in KEYS:
            raise UserError(f"unknown key '{key}'{did_you_mean(key, KEYS)}; valid keys: {', '.join(KEYS)}")
    checked = {key: _check_type(key, value, HINTS[key]) for key, value in values.items()}
    cfg = TrialConfig(**checked)
    validate(cfg)
    return cfg


def validate(cfg: TrialConfig) -> None:
    from byol_bench.backbones import BACKBONES
    from byol_bench.data import DATASETS
    from byol_bench.methods import METHODS
    from byol_bench.schedules import parse_momentum_schedule
    from byol_bench.views import RECIPES

    for kind, name, registry in (("method", cfg.method, METHODS), ("data set", cfg.dataset, DATASETS),
                                 ("backbone", cfg.backbone, BACKBONES)):
        if name not in registry:
            raise unknown(kind, name, registry)
    for key in _POSITIVE:
        value = getattr(cfg, key)
        if value is not None and value <= 0:
            raise UserError(f"{key} must be positive, got {value}; give a value above 0")
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise UserError(f"{key} must not be negative, got {getattr(cfg, key)}")
    for key, choices in {**_CHOICES, "views": ("method", *RECIPES)}.items():
        if getattr(cfg, key) not in choices:
            raise unknown(key, getattr(cfg, key), choices)
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
