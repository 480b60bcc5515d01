"""Backbones: ResNets with the small-image stem, and a small CNN sized for CPU runs.

Each builder returns ``(module, feature_dim)``; the module maps (N, C, H, W) to (N, feature_dim).
"""

from __future__ import annotations

import torch.nn as nn
import torchvision

from byol_bench.errors import unknown
from byol_bench.models.method import BackboneBuilder

SMALL_IMAGE_MAX = 64  # inputs up to this size get the 3x3 stem without max-pool


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
    def build(in_channels: int, image_size: int) -> tuple[nn.Module, int]:
        model = getattr(torchvision.models, name)(weights=None)
        if image_size <= SMALL_IMAGE_MAX:
            # The ImageNet stem (7x7 stride 2 + max-pool) throws away most of a 32 px image (lightly#1419).
            model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        feature_dim = model.fc.in_features
        model.fc = nn.Identity()
        return model, feature_dim

    return build


BACKBONES: dict[str, BackboneBuilder] = {"small-cnn": small_cnn, "resnet18": _resnet("resnet18"), "resnet50": _resnet("resnet50")}


def build_backbone(name: str, in_channels: int, image_size: int) -> tuple[nn.Module, int]:
    if name not in BACKBONES:
        raise unknown("backbone", name, BACKBONES)
    return BACKBONES[name](in_channels, image_size)
