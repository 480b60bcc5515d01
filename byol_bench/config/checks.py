"""A trial config's checks, before anything runs: each knob's own constraint, the registries' names, and the rules
that tie knobs together (data set sizes, views, a method's own knobs and options, backbone weights, ViT patches)."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from dataclasses import fields
from pathlib import Path

from byol_bench.config.knobs import TYPE_NAMES, KEYS, TrialConfig, listed, method_reads
from byol_bench.errors import UserError, did_you_mean, unknown

WEIGHTS_SUFFIXES = (".safetensors", ".pt", ".pth")  # what backbone_weights may name, besides a library's

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
    from byol_bench.data.datasets import DATASETS
    from byol_bench.models.backbones import backbone_problem
    from byol_bench.models.methods import METHODS
    from byol_bench.models.plugins import broken

    for field in fields(cfg):
        _check_constraint(field, getattr(cfg, field.name))
    if cfg.method not in METHODS and (found := broken("method", cfg.method)):
        raise UserError(str(found))
    for kind, name, registry in (("method", cfg.method, METHODS), ("data set", cfg.dataset, DATASETS),
                                 ("views", cfg.views, ("method", *METHODS))):
        if name not in registry:
            raise unknown(kind, name, registry)
    if backbone_problem(cfg.backbone):
        raise UserError(backbone_problem(cfg.backbone))
    _validate_backbone_options(cfg)
    if isinstance(cfg.compile, str) and cfg.compile != "auto":
        raise UserError(f"compile: {cfg.compile!r} is not valid; give true, false or auto")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise UserError(f"device '{cfg.device}' is not valid; give auto, cpu, cuda or cuda:N")
    for fraction in map(float, listed(cfg.probe_label_fractions)):
        if not 0 < fraction <= 1:
            raise UserError(f"probe_label_fractions: {fraction:g} is not a fraction of the labels; give each in "
                            "(0, 1], e.g. 0.01,0.1")
    _validate_eval_datasets(listed(cfg.eval_datasets))
    if cfg.embedding_map and not any(importlib.util.find_spec(package) for package in ("umap", "sklearn")):
        raise UserError("embedding_map needs scikit-learn (t-SNE) or umap-learn (UMAP): pip install "
                        "'byol-bench[embedding]', or leave embedding_map out")
    if cfg.online_probe and DATASETS[cfg.dataset].unlabeled_pretraining:
        raise UserError(f"online_probe: {cfg.dataset} pretrains on unlabeled images, which the online probe cannot "
                        "learn from; leave online_probe out")
    if cfg.crop_min_scale is not None and cfg.crop_min_scale > 1:
        raise UserError(f"crop_min_scale {cfg.crop_min_scale} is above 1; give an area fraction in (0, 1]")
    image_size, pretrain = _validate_data(cfg, DATASETS[cfg.dataset])
    _validate_method_knobs(cfg, cfg.global_view_size(image_size), pretrain)
    _validate_backbone_weights(cfg)
    _validate_patches(cfg, image_size)


def _validate_data(cfg: TrialConfig, spec) -> tuple[int, int | None]:
    """The data's knobs against the data set: sizes, splits, subsets. Returns the image size and the pretraining
    images (None where known only once loaded)."""
    if not spec.any_size and cfg.image_size not in (None, spec.image_size):
        raise UserError(f"image_size {cfg.image_size}: {cfg.dataset} is used at its native {spec.image_size} px; "
                        "leave image_size out (it sizes imagefolder and synthetic data only)")
    if cfg.dataset == "imagefolder" and not cfg.data_dir:
        raise UserError("dataset imagefolder needs --data-dir (the root of a <class>/<image> tree)")
    if cfg.validation is not None and not cfg.validation < 1:
        raise UserError(f"validation {cfg.validation} is not below 1; give the held-out fraction of the train split, "
                        "e.g. 0.1")
    if cfg.validation is not None and cfg.test_subset is not None:
        raise UserError("test_subset: with validation the test split is never read; leave test_subset out")
    if cfg.test_subset is not None and cfg.test_subset < cfg.workers:
        raise UserError(f"test_subset {cfg.test_subset} is smaller than workers {cfg.workers}: every worker evaluates "
                        "a share of the test images; raise test_subset")
    if cfg.subset is not None and cfg.global_batch_size > cfg.subset:
        raise UserError(f"global batch {cfg.global_batch_size} (batch_size x workers) is larger than subset {cfg.subset}; "
                        "lower the batch size or raise the subset")
    sizes = spec.sizes
    pretrain = None
    if sizes is not None:  # known before loading: fail now, not minutes into a sweep
        pretrain, train, test = sizes
        pretrain = min(pretrain, cfg.subset or pretrain)
        for key, requested, available in (("subset", cfg.subset, train), ("test_subset", cfg.test_subset, test),
                                          ("global batch", cfg.global_batch_size, pretrain)):
            if requested is not None and requested > available:
                raise UserError(f"{key} {requested} is larger than {cfg.dataset}'s {available} images; give at most {available}")
    image_size = cfg.image_size or spec.image_size
    if cfg.view_size is not None and cfg.view_size > image_size:
        raise UserError(f"view_size {cfg.view_size} is larger than the {image_size} px images; give at most "
                        f"{image_size} (null: {image_size})")
    return image_size, pretrain


def _validate_eval_datasets(items: list[str]) -> None:
    """Each transfer data set a registered one (imagefolder is given by its path) or a folder of class folders,
    and no two named alike in the metrics."""
    from byol_bench.data.datasets import DATASETS, transfer_name

    registered = [name for name in DATASETS if name != "imagefolder"]
    for item in items:
        if item in registered:
            continue
        path = Path(item).expanduser()
        if not path.is_dir():
            raise UserError(f"eval_datasets: {item!r} is neither a data set{did_you_mean(item, registered)} nor a "
                            f"folder; give one of {', '.join(registered)} or an imagefolder tree's path")
        if not any(child.is_dir() for child in path.iterdir()):
            raise UserError(f"eval_datasets: {item} holds no class folders, so its classes cannot be read; give the "
                            "root of a <class>/<image> tree")
    names = [transfer_name(item) for item in items]
    if len(set(names)) < len(names):
        raise UserError(f"eval_datasets: {', '.join(items)} name the same metrics ({', '.join(names)}); give each "
                        "data set once, and folders of different names")


def _validate_method_knobs(cfg: TrialConfig, image_size: int, pretrain_images: int | None) -> None:
    """The method-specific knobs: only the method's own, each within what the data allows."""
    from byol_bench.models.methods import METHODS
    from byol_bench.models.momentum import parse_momentum_schedule

    for key in KEYS:
        if getattr(cfg, key) is not None and not method_reads(cfg.method, key):
            readers = ", ".join(name for name, method in METHODS.items() if key in method.config_keys)
            raise UserError(f"{key}: method {cfg.method} does not read it (read by {readers}); leave it out")
    _validate_method_options(cfg)
    if cfg.momentum_schedule is not None:
        parse_momentum_schedule(cfg.momentum_schedule)
    if cfg.projection_layers not in (None, 2, 3):
        raise UserError(f"projection_layers {cfg.projection_layers} is not valid; give 3 (the paper's head) or 2 "
                        "(lightly's CIFAR-10 head)")
    if cfg.memory_bank_size is not None and pretrain_images is not None and cfg.memory_bank_size > pretrain_images:
        raise memory_bank_too_large(cfg.memory_bank_size, pretrain_images)
    if cfg.local_crop_size is not None and cfg.local_crop_size > image_size:
        raise UserError(f"local_crop_size {cfg.local_crop_size} is larger than the {image_size} px global crops; "
                        f"give at most {image_size} (null: half of it)")


def _validate_method_options(cfg: TrialConfig) -> None:
    """Every option given is one the method declares, of its default's type (an int serves a float)."""
    from byol_bench.models.method import method_options
    from byol_bench.models.methods import METHODS

    declared = method_options(METHODS[cfg.method])
    for name, value in (cfg.method_options or {}).items():
        if name not in declared:
            listed_options = ", ".join(f"{key} (default {default!r})" for key, default in declared.items())
            raise UserError(f"method_options.{name}: method {cfg.method} has no such option; "
                            + (f"its options: {listed_options}" if declared else "it takes no method_options"))
        default = declared[name]
        if default is not None and value is not None and not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool)):
            raise UserError(f"method_options.{name}: {value!r} is not valid for method {cfg.method}; give "
                            f"{TYPE_NAMES.get(type(default), type(default).__name__)} (default {default!r})")


def _validate_backbone_options(cfg: TrialConfig) -> None:
    """A registered backbone's options are its builder's keyword parameters (a torchvision or timm model's are
    checked as it is built)."""
    from byol_bench.models.backbones import BACKBONES

    builder = BACKBONES.get(cfg.backbone)
    if builder is None or not cfg.backbone_options:
        return
    parameters = list(inspect.signature(builder).parameters.values())[2:]  # after in_channels, image_size
    if any(parameter.kind is parameter.VAR_KEYWORD for parameter in parameters):
        return
    for name in cfg.backbone_options:
        if name not in {parameter.name for parameter in parameters}:
            listed_options = ", ".join(f"{p.name} (default {p.default!r})" for p in parameters) or "none"
            raise UserError(f"backbone_options.{name}: backbone {cfg.backbone} takes no such option; its options: "
                            f"{listed_options}")


def _validate_backbone_weights(cfg: TrialConfig) -> None:
    if cfg.epochs == 0 and cfg.backbone_weights is None:
        raise UserError("epochs 0 trains nothing; give epochs above 0, or backbone_weights to evaluate")
    if cfg.backbone_weights is None:
        return
    if cfg.epochs:
        raise UserError(f"backbone_weights {cfg.backbone_weights}: a backbone trained elsewhere is evaluated as it is; "
                        "set epochs 0 (byol-bench evaluate does)")
    problem = weights_problem(cfg.backbone_weights)
    if problem:
        raise UserError(problem)


def _validate_patches(cfg: TrialConfig, image_size: int) -> None:
    """A ViT backbone cuts every image it sees into whole patches: the images evaluated, the global views and a
    multi-crop method's local crops must each be a multiple of its patch side (else its border is dropped unseen)."""
    from byol_bench.models.backbones import patch_size

    patch = patch_size(cfg.backbone, cfg.backbone_options or {})
    if patch is None:
        return
    view = cfg.global_view_size(image_size)
    sizes = {"images": image_size, "global views": view}
    if cfg.local_crops:
        sizes[f"method {cfg.method}'s local crops"] = cfg.local_crop_size or view // 2
    for what, size in sizes.items():
        if size % patch:
            raise UserError(f"backbone {cfg.backbone}: the {size} px {what} do not divide into its {patch} px patches; "
                            f"set backbone_options.patch_size to a divisor of {size}"
                            + (" or local_crop_size to a multiple of it" if "local" in what else ""))


def memory_bank_too_large(size: int, pretrain_images: int) -> UserError:
    return UserError(f"memory_bank_size {size} is larger than the {pretrain_images} pretraining images (the bank "
                     f"would hold stale copies of them); give at most {pretrain_images}")


def weights_problem(source: str) -> str | None:
    """Why ``backbone_weights`` cannot be read, found without reading it (a missing file, an unknown kind)."""
    family, _, name = source.partition(":")
    if family in ("torchvision", "timm") and name:
        return None if family == "timm" or "." in name else (
            f"backbone_weights {source}: name the weights too, e.g. torchvision:resnet18.IMAGENET1K_V1")
    path = Path(source).expanduser()
    if not path.is_file():
        return f"backbone_weights {source}: no such file; give a .safetensors, .pt or .pth file, or torchvision:MODEL.WEIGHTS"
    if path.suffix not in WEIGHTS_SUFFIXES:
        return f"backbone_weights {source}: not a .safetensors, .pt or .pth file; save the state_dict as one of them"
    return None
