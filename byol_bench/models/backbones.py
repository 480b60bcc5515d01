"""Backbones: a small CNN sized for CPU runs, ResNets with the small-image stem, those of installed plug-in packages
(``models.plugins``), and any torchvision or timm model by name (``torchvision:resnet34``, ``timm:vit_tiny_patch16_224``).

Each builder takes ``(in_channels, image_size, **backbone_options)`` and returns ``(module, feature_dim)``; the
module maps (N, C, H, W) images to (N, feature_dim) features.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

import torch
import torch.nn as nn
import torchvision

from byol_bench.errors import UserError, did_you_mean, unknown
from byol_bench.models.method import BackboneBuilder
from byol_bench.models.plugins import BACKBONE_GROUP, BUILT_IN, broken, load_plugins

SMALL_IMAGE_MAX = 64  # inputs up to this size get the 3x3 stem without max-pool
FAMILIES = ("torchvision", "timm")  # <family>:<model name>, any model of that library
CLASSIFIERS = ("fc", "heads", "head", "classifier")  # the attribute names torchvision gives a model's last layer


def small_cnn(in_channels: int, image_size: int, width: int = 32) -> tuple[nn.Module, int]:
    """Six 3x3 conv-BN-ReLU layers (width x 1-1-2-2-4-4, strides 1-1-2-1-2-1) and global average pooling."""
    widths = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    strides = [1, 1, 2, 1, 2, 1]
    layers, channels = [], in_channels
    for out_channels, stride in zip(widths, strides):
        layers += [nn.Conv2d(channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), channels


def _resnet(name: str):
    def build(in_channels: int, image_size: int, **options) -> tuple[nn.Module, int]:
        return _torchvision_model(name, in_channels, image_size, **options)

    return build


BACKBONES: dict[str, BackboneBuilder] = {"small-cnn": small_cnn, "resnet18": _resnet("resnet18"), "resnet50": _resnet("resnet50")}
BACKBONE_ORIGINS = dict.fromkeys(BACKBONES, BUILT_IN)
load_plugins(BACKBONE_GROUP, "backbone", BACKBONES, BACKBONE_ORIGINS, lambda found: [] if callable(found) else
             ["is not a backbone builder: give a function (in_channels, image_size, **options) -> (module, feature_dim)"])


def backbone_problem(name: str) -> str | None:
    """Why ``name`` names no backbone here (one line with the fix), or None."""
    family, _, model = name.partition(":")
    if family in FAMILIES and model:
        if importlib.util.find_spec(family) is None:
            return f"backbone {name}: {family} is not installed; pip install 'byol-bench[timm]'"
        names = torchvision.models.list_models() if family == "torchvision" else _timm().list_models()
        if model not in names:
            lister = "torchvision.models.list_models()" if family == "torchvision" else "timm.list_models()"
            return f"backbone {name}: {family} has no model {model!r}{did_you_mean(model, names)}; {lister} lists them"
        return None
    found = broken("backbone", name)
    if found is not None:
        return str(found)
    return None if name in BACKBONES else str(unknown("backbone", name, [*BACKBONES, "torchvision:NAME", "timm:NAME"]))


def backbone_origin(name: str) -> str:
    """Where a backbone comes from: built-in, a plug-in's "package version", or the library's."""
    family = name.partition(":")[0]
    if family in FAMILIES and ":" in name:
        return f"{family} {importlib.metadata.version(family)}"
    return BACKBONE_ORIGINS[name]


def patch_size(name: str, options: dict) -> int | None:
    """A ViT's patch side in px (from its options, else its name), or None for a backbone without patches."""
    if "patch_size" in options:
        return int(options["patch_size"])
    found = re.search(r"(?:vit|deit|beit|eva)\w*?_patch(\d+)|vit_[bhl]_(\d+)", name)
    return int(found.group(1) or found.group(2)) if found else None


def build_backbone(name: str, in_channels: int, image_size: int, options: dict | None = None) -> tuple[nn.Module, int]:
    problem = backbone_problem(name)
    if problem is not None:
        raise UserError(problem)
    family, _, model = name.partition(":")
    if family == "torchvision" and model:
        return _torchvision_model(model, in_channels, image_size, **(options or {}))
    if family == "timm" and model:
        return _timm_model(model, in_channels, image_size, **(options or {}))
    try:
        return BACKBONES[name](in_channels, image_size, **(options or {}))
    except TypeError as error:
        raise UserError(f"backbone_options {options}: backbone {name} does not take them ({error})") from None


def _torchvision_model(name: str, in_channels: int, image_size: int, small_stem: bool | None = None,
                       **options) -> tuple[nn.Module, int]:
    """A torchvision model without its classifier, its first convolution taking ``in_channels``; with the small-image
    stem where it has a ResNet's (``conv1`` and ``maxpool``) and ``small_stem`` asks for it (None: for images up to
    SMALL_IMAGE_MAX px; false keeps ImageNet's stem, as ImageNet weights need)."""
    if small_stem is None:
        small_stem = image_size <= SMALL_IMAGE_MAX
    if name.startswith("vit_"):
        options.setdefault("image_size", image_size)
    try:
        model = torchvision.models.get_model(name, weights=None, **options)
    except (TypeError, ValueError) as error:
        raise UserError(f"backbone_options {options}: torchvision's {name} does not take them ({error})") from None
    if small_stem and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        # The ImageNet stem (7x7 stride 2 + max-pool) throws away most of a 32 px image (lightly#1419).
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    _first_conv_takes(model, in_channels)
    for attribute in CLASSIFIERS:
        if isinstance(getattr(model, attribute, None), nn.Module):
            setattr(model, attribute, nn.Identity())
            break
    return model, _feature_dim(model, in_channels, image_size)


def _timm():
    import timm

    return timm


def _timm_model(name: str, in_channels: int, image_size: int, **options) -> tuple[nn.Module, int]:
    """A timm model without its classifier (``num_classes=0``); a ViT sized for the images (its ``img_size``), and
    taking other sizes too (``dynamic_img_size``: local crops, evaluation at the full image size)."""
    if patch_size(name, options) is not None:
        options = {"img_size": image_size, "dynamic_img_size": True, **options}
    try:
        model = _timm().create_model(name, pretrained=False, num_classes=0, in_chans=in_channels, **options)
    except (TypeError, ValueError, AssertionError) as error:
        raise UserError(f"backbone_options {options}: timm's {name} does not take them ({error})") from None
    return model, model.num_features


def _first_conv_takes(model: nn.Module, in_channels: int) -> None:
    """The model's first convolution rebuilt for ``in_channels`` input channels where it takes others."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(parent, child_name, nn.Conv2d(in_channels, child.out_channels, child.kernel_size,
                                                          child.stride, child.padding, bias=child.bias is not None))
                return


def _feature_dim(model: nn.Module, in_channels: int, image_size: int) -> int:
    """The width of the model's features, from one forward pass of two blank images."""
    was_training = model.training
    with torch.no_grad():
        width = model.eval()(torch.zeros(2, in_channels, image_size, image_size)).flatten(1).shape[1]
    model.train(was_training)
    return width
