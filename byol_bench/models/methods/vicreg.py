"""VICReg: invariance between two views' projections, with the variance and covariance of each kept in
check over the batch (Bardes et al., 2022)."""

import torch.nn as nn
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead

from byol_bench.models.view_recipe import ViewRecipe


class VICReg(nn.Module):
    views = (ViewRecipe(blur_prob=0.5, solarize_prob=0.1),) * 2  # lightly's VICRegTransform
    config_keys = {"projection_layers": 3}  # 3: the paper's head; 2 for a shallower one
    # lightly's Imagenette benchmark: LARS at 0.3 x batch/256 ("training diverges without LARS").
    trains_with = {"optimizer": "lars", "lr": 0.15, "weight_decay": 1e-4}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.projection_head = VICRegProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim,
                                                    num_layers=cfg.projection_layers)
        # In a DDP trial the variance and covariance terms are taken over the whole global batch.
        self.criterion = VICRegLoss(gather_distributed=True)

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        return self.criterion(self.projection_head(self.backbone(view0)), self.projection_head(self.backbone(view1)))
