"""A small CNN with GroupNorm instead of BatchNorm: its features do not depend on the batch (nor on SyncBatchNorm in a
DDP trial)."""

from torch import nn


def gn_cnn(in_channels: int, image_size: int, width: int = 32, groups: int = 8) -> tuple[nn.Module, int]:
    """Four 3x3 conv-GroupNorm-ReLU layers (width x 1-2-2-4, strides 1-2-1-2) and global average pooling; ``width`` and
    ``groups`` are backbone_options (--backbone-option width=64)."""
    layers, channels = [], in_channels
    for multiple, stride in ((1, 1), (2, 2), (2, 1), (4, 2)):
        layers += [nn.Conv2d(channels, width * multiple, 3, stride, 1, bias=False),
                   nn.GroupNorm(groups, width * multiple), nn.ReLU(inplace=True)]
        channels = width * multiple
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels
