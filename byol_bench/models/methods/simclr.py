"""SimCLR: contrast two views of each image against the rest of the batch with NT-Xent (Chen et al., 2020)."""

import torch.nn as nn
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from byol_bench.models.view_recipe import ViewRecipe


class SimCLR(nn.Module):
    views = (ViewRecipe(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_prob=0.5),) * 2  # SimCLRTransform
    config_keys = {"temperature": 0.5}  # the method-specific config keys it reads, with its defaults

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
        # In a DDP trial each rank contrasts its views with the whole global batch (a no-op on one worker).
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        return self.criterion(self.projection_head(self.backbone(view0)), self.projection_head(self.backbone(view1)))
