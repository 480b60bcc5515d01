"""Every knob of one trial: its default, its type, its constraint and a line of help (``TrialConfig``), and how a
value from YAML or the command line reads as that type."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from byol_bench.errors import UserError

LR_REFERENCE_BATCH = 128  # lr is given for this batch size and scaled linearly (Goyal et al.), unless lr_scaling is none
# compile "auto": the fewest training steps for which torch.compile pays back its compile time on a GPU
# (docs/gpus.md has the measured per-step saving and compile time this rests on).
COMPILE_MIN_STEPS = 4000


def knob(default, help: str, *, choices: tuple[str, ...] = (), above: float | None = None,
         at_least: float | None = None, items: type | None = None, options: bool = False):
    """A config field: its default, one line of help (``byol-bench train --help``) and its own
    constraint, checked by ``validate``: one of ``choices``, or a number ``above`` / ``at_least`` a bound.
    None (an optional knob left empty) always passes. A knob of ``items`` is a list of them: a YAML list or
    comma-separated text, kept as that text (a table cell, a grouping key). A knob of ``options`` is a mapping of
    names to values (a YAML mapping, or name=value,... text); elsewhere each option is a knob of its own,
    ``<knob>.<name>`` (a sweep axis, a table column, a trial id)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "above": above,
                                                        "at_least": at_least, "items": items, "options": options})


@dataclass(frozen=True)
class TrialConfig:
    # what is trained
    method: str = knob("byol", "the SSL method: byol, simclr, simsiam, moco, barlowtwins, vicreg, nnclr, dcl, dino or swav")
    backbone: str = knob("small-cnn", "small-cnn (for CPU runs), resnet18, resnet50, a plug-in's, or any torchvision or "
                         "timm model by name: torchvision:resnet34, timm:vit_tiny_patch16_224 (byol-bench methods lists them)")
    backbone_options: dict | None = knob(None, "keyword overrides for the backbone's builder, name=value,... (e.g. "
                                         "patch_size=4 for a ViT); a sweep axis: backbone_options.NAME", options=True)
    method_options: dict | None = knob(None, "the method's own hyperparameters, name=value,... (its options: "
                                       "byol-bench methods lists them, with defaults); a sweep axis: method_options.NAME",
                                       options=True)
    hidden_dim: int = knob(512, "the projection head's hidden width", above=0)
    projection_dim: int = knob(128, "the projection head's output width (DINO: the bottleneck before its last layer)",
                               above=0)
    # Method-specific knobs: only the methods that list one in their `knobs` read it, and fill it with their own
    # default when it is left empty (null); a method that does not read it refuses it.
    predictor_hidden_dim: int | None = knob(None, "the predictor's hidden width (BYOL, SimSiam, NNCLR); null: the "
                                            "method's default", above=0)
    projection_layers: int | None = knob(None, "the projection head's depth where lightly's CIFAR-10 benchmark "
                                         "departs from the paper (SimSiam, Barlow Twins, VICReg, NNCLR, DINO): 3, the "
                                         "paper's (default), or 2, lightly's CIFAR-10 head")
    temperature: float | None = knob(None, "the contrastive loss's temperature (SimCLR, MoCo, NNCLR, DCL); null: the "
                                     "method's default", above=0)
    stop_gradient: bool | None = knob(None, "SimSiam's stop-gradient (default true); false is the collapse ablation")
    momentum_schedule: str | None = knob(None, "the target network's EMA momentum (BYOL, MoCo, DINO): constant:0.99, "
                                         "cosine:0.99-1.0, linear:0.9-0.99 or warmup:0.99@0.1; null: the method's default")
    memory_bank_size: int | None = knob(None, "entries in MoCo's queue of negatives or NNCLR's support set, at most the "
                                        "pretraining images; null: the method's default", above=0)
    prototypes: int | None = knob(None, "SwAV's prototypes, DINO's output dimension; null: the method's default",
                                  above=0)
    local_crops: int | None = knob(None, "small local crops per image besides the two global ones (DINO, SwAV); "
                                   "null: the method's default", at_least=0)
    local_crop_size: int | None = knob(None, "the local crops' side in px, at most the image's (DINO, SwAV); null: "
                                       "half the image's", above=0)
    # data
    dataset: str = knob("fashion-mnist", "the data set, e.g. fashion-mnist, cifar10, stl10, imagefolder")
    data_dir: str | None = knob(None, "the data root, or imagefolder's <class>/<image> tree; "
                                "null: $BYOL_BENCH_DATA, else ~/.cache/byol-bench/data")
    subset: int | None = knob(None, "a seeded, stratified subset of the train split; null: all of it", above=0)
    test_subset: int | None = knob(None, "a seeded, stratified subset of the test split; null: all of it", above=0)
    validation: float | None = knob(None, "a fraction in (0, 1) of the train split (after subset) held out, seeded and "
                                    "stratified: every accuracy is measured on it and the test split goes unread (a "
                                    "tuning search's trials); null: off, accuracies on the test split", above=0)
    image_size: int | None = knob(None, "imagefolder's decode size (null: 64) or synthetic's drawing size (null: 32); "
                                  "other data sets keep their native size", above=0)
    views: str = knob("method", "the recipe of the two global views: the method's own (method), or another "
                      "method's for all, e.g. simclr (a multi-crop method keeps its own local crops)")
    crop_min_scale: float | None = knob(None, "the global views' random-resized crop's smallest area fraction, at "
                                        "most 1; null: the recipe's (0.08, SimSiam 0.2)", above=0)
    view_size: int | None = knob(None, "the global views' side in px, at most the image's: their crops are resized to "
                                 "it for pretraining, while evaluation sees whole images at their size; null: the "
                                 "image's", above=0)
    jitter_strength: float = knob(1.0, "scales the recipe's colour-jitter strengths (lightly's cj_strength: 0.5 halves "
                                  "them)", at_least=0)
    augment: str = knob("tensor", "tensor: batched on the training device; pil: lightly's transforms in workers",
                        choices=("tensor", "pil"))
    loader_workers: int = knob(1, "DataLoader workers for augment pil; 0: in the main process", at_least=0)
    # optimisation
    batch_size: int = knob(256, "images per step per worker: the global batch is batch_size x workers", above=0)
    epochs: int = knob(4, "pretraining epochs (0 with backbone_weights: evaluate them as they are)", at_least=0)
    # A method may train with its own optimizer, lr and weight decay (its `trains_with`), each unless given.
    optimizer: str = knob("sgd", "the pretraining optimizer (Barlow Twins and VICReg: their own, lars)",
                          choices=("sgd", "lars", "adam"))
    lr: float = knob(0.06, f"the learning rate at batch {LR_REFERENCE_BATCH}, scaled with the global batch by "
                     "lr_scaling (Barlow Twins and VICReg: their own)", above=0)
    lr_scaling: str = knob("linear", f"linear: lr x global batch / {LR_REFERENCE_BATCH}; none: lr at every batch size "
                           "(lightly's SimSiam benchmark)", choices=("linear", "none"))
    lr_schedule: str = knob("cosine", "the learning rate after warm-up", choices=("cosine", "constant"))
    lr_warmup_epochs: float = knob(0.0, "epochs of linear learning-rate warm-up", at_least=0)
    weight_decay: float = knob(5e-4, "the optimizer's weight decay (Barlow Twins and VICReg: their own)", at_least=0)
    sgd_momentum: float = knob(0.9, "the optimizer's momentum (SGD and LARS)", at_least=0)
    # evaluation
    knn_k: int = knob(200, "neighbours the kNN classifier weighs", above=0)
    knn_t: float = knob(0.1, "the kNN classifier's temperature", above=0)
    knn_monitor_every: int = knob(0, "kNN accuracy on the test set every N epochs; 0: never; 1 also records the best "
                                  "epoch's (knn_top1_best, what lightly's benchmarks report)", at_least=0)
    probe_epochs: int = knob(100, "epochs of the linear probe on frozen features", above=0)
    probe_lr: float = knob(0.01, "the linear probe's learning rate", above=0)
    probe_label_fractions: str | None = knob(None, "low-label evaluation: the kNN and linear probe also on seeded, "
                                             "class-stratified fractions of the train images' labels, each in (0, 1], "
                                             "e.g. 0.01,0.1 (metrics knn_top1_1pct, linear_top1_10pct, ...; 1 is "
                                             "knn_top1 and linear_top1)", items=float)
    eval_datasets: str | None = knob(None, "transfer evaluation: the frozen backbone's kNN and linear probe also on "
                                     "these data sets, each a registered name (e.g. cifar10) or an imagefolder tree's "
                                     "path, converted to the pretraining images' channels and size (metrics "
                                     "transfer_<name>_knn_top1 and _linear_top1)", items=str)
    store_dir: str | None = knob(None, "where decoded-image stores live (a data set decoded once per node and "
                                 "stored size, memory-mapped by every trial); null: <data root>/stores. A shared file "
                                 "system serves a whole cluster")
    store_size: int | None = knob(None, "the side an ImageFolder tree's images are stored at (shorter side resized, "
                                  "centre square), which random-resized crops draw from; null: image_size x 256/224",
                                  above=0)
    backbone_weights: str | None = knob(None, "evaluate a backbone trained elsewhere (with epochs 0): a .safetensors, "
                                        ".pt or .pth state_dict, torchvision:MODEL.WEIGHTS (e.g. "
                                        "torchvision:resnet18.IMAGENET1K_V1) or timm:NAME (its pretrained weights)")
    save_weights: bool = knob(True, "save the final backbone (safetensors) and its model card with the result; false "
                              "for sweeps too large to keep every trial's weights")
    embedding_map: bool = knob(False, "a 2-D map of the test features (UMAP where umap-learn is installed, else "
                               "scikit-learn's t-SNE) of the trained and of the random-init backbone, for the "
                               "report; needs pip install 'byol-bench[embedding]'")
    online_probe: bool = knob(False, "also train a linear classifier during pretraining, one step per training step "
                              "on the backbone's features of that step's images un-augmented (an online probe), its "
                              "test top-1 every epoch; it leaves the pretraining's numbers as they are. Needs "
                              "labelled pretraining images")
    # execution (each speed switch is recorded with the result)
    device: str = knob("auto", "auto, cpu, cuda or cuda:N")
    precision: str = knob("auto", "the training step's: bf16 (autocast; evaluation stays fp32), fp32, or auto: bf16 "
                          "where the hardware multiplies bf16 natively (a CPU with AMX-BF16, a CUDA GPU with bf16), "
                          "fp32 elsewhere", choices=("auto", "fp32", "bf16"))
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
        return self.lr * self.global_batch_size / LR_REFERENCE_BATCH if self.lr_scaling == "linear" else self.lr

    def global_view_size(self, image_size: int) -> int:
        """The global views' side in px for images of ``image_size``: ``view_size``, else the images'."""
        return self.view_size or image_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


KEYS = tuple(f.name for f in fields(TrialConfig))
KNOBS = {f.name: f for f in fields(TrialConfig)}
OPTION_KNOBS = tuple(key for key in KEYS if KNOBS[key].metadata["options"])  # method_options, backbone_options
HINTS = typing.get_type_hints(TrialConfig)
_TRUE, _FALSE, _NULL = ("true", "yes", "1"), ("false", "no", "0"), ("null", "none")
TYPE_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "null"}


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


def knob_value(key: str, value):
    """``value`` as knob ``key``'s type, or a UserError. The one type rule for a YAML value and for a
    command-line flag's text: '4' reads as 4, 'true' as True, 'null' (or 'none') as None where None is allowed."""
    kinds = knob_types(key)
    if type(None) in kinds and (value is None or (isinstance(value, str) and value.lower() in _NULL)):
        return None
    items = KNOBS[key].metadata["items"]
    if items is not None:
        return _listed(key, items, value)
    if KNOBS[key].metadata["options"]:
        return parse_options(key, value)
    for kind in kinds:
        try:
            return _as(kind, value)
        except ValueError:
            continue
    raise UserError(f"{key}: {value!r} is not valid; give {' or '.join(TYPE_NAMES[kind] for kind in kinds)}")


def parse_options(key: str, value) -> dict:
    """An options knob's mapping, or its name=value,... text as one (each value read as YAML reads it)."""
    if value is None:
        return {}
    if isinstance(value, str):
        pairs = [part.partition("=") for part in value.split(",") if part.strip()]
        if not all(name.strip().isidentifier() and equals for name, equals, _ in pairs):
            raise UserError(f"{key}: {value!r} is not valid; give name=value, several separated by commas")
        value = {name.strip(): yaml.safe_load(text.strip()) for name, _, text in pairs}
    if not isinstance(value, dict) or not all(isinstance(name, str) and name.isidentifier() for name in value):
        raise UserError(f"{key}: {value!r} is not valid; give a mapping of names to values, e.g. {{tau: 0.1}}")
    return dict(value)


def _listed(key: str, kind: type, value) -> str:
    """A list knob's YAML list or comma-separated text as its canonical text, each item read as ``kind``."""
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else None
    try:
        if not parts:
            raise ValueError(value)
        return ",".join(str(_as(kind, part.strip() if isinstance(part, str) else part)) for part in parts)
    except ValueError:
        raise UserError(f"{key}: {value!r} is not valid; give {TYPE_NAMES[kind]} or several, as a YAML list or "
                        "comma-separated text") from None


def listed(text: str | None) -> list[str]:
    """A list knob's items (its canonical text split)."""
    return text.split(",") if text else []


def is_key(key: str) -> bool:
    """Whether ``key`` names a knob: a config field, or one option of an options knob (``method_options.tau``)."""
    return key in KEYS or key.partition(".")[0] in OPTION_KNOBS and bool(key.partition(".")[2])


def folded(values: dict) -> dict:
    """``values`` with each ``<knob>.<name>`` key folded into its options knob's mapping (given whole or not)."""
    values = dict(values)
    for key in [key for key in values if "." in key and is_key(key)]:
        knob, _, name = key.partition(".")
        values[knob] = {**parse_options(knob, values.get(knob)), name: values.pop(key)}
    return values


def option_columns(config: dict) -> dict:
    """A config's options as knobs of their own (``method_options.tau``): table columns, grouping keys."""
    return {f"{knob}.{name}": value for knob in OPTION_KNOBS for name, value in (config.get(knob) or {}).items()}


def method_reads(method: str, key: str) -> bool:
    """Whether a trial of ``method`` uses config ``key``: a key that some method lists in its ``knobs``
    is read only by the methods that list it (SimCLR has no momentum schedule)."""
    from byol_bench.models.methods import METHODS

    from byol_bench.models.method import method_options

    knob, _, option = key.partition(".")
    if knob == "method_options" and option:
        return method in METHODS and option in method_options(METHODS[method])
    method_specific = any(key in known.config_keys for known in METHODS.values())
    return not method_specific or (method in METHODS and key in METHODS[method].config_keys)


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
