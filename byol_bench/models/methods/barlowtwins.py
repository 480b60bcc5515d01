"""Barlow Twins: the cross-correlation of two views' projections over the batch is pushed towards the
identity (Zbontar et al., 2021)."""

import torch
import torch.nn as nn
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules.heads import VICRegProjectionHead
from lightly.utils.dist import gather, world_size

from byol_bench.models.methods.byol import BYOL


def global_batch(z):
    """Every rank's rows of ``z`` (in rank order, with their gradients), on every rank."""
    return torch.cat(gather(z)) if world_size() > 1 else z


class BarlowTwins(nn.Module):
    views = BYOL.views  # lightly's Barlow Twins example uses BYOLTransform
    config_keys = {"projection_layers": 3}  # 3: the paper's head; 2: lightly's CIFAR-10 benchmark's
    # lightly's ImageNet benchmark: LARS at 0.2 x batch/256 (SGD at the suite's lr collapses it on a small CNN).
    trains_with = {"optimizer": "lars", "lr": 0.1, "weight_decay": 1.5e-6}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        # Barlow Twins' head (lightly's BarlowTwinsProjectionHead is this at three layers).
        self.projection_head = VICRegProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim,
                                                    num_layers=cfg.projection_layers)
        self.criterion = BarlowTwinsLoss()

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        z0, z1 = self.projection_head(self.backbone(view0)), self.projection_head(self.backbone(view1))
        # In a DDP trial every rank computes the loss of the whole global batch: lightly's gather_distributed
        # would standardise each rank's projections by that rank's own batch statistics instead.
        return self.criterion(global_batch(z0), global_batch(z1))
