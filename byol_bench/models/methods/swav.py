"""SwAV: each crop predicts the prototype assignment that Sinkhorn-Knopp gives the other global crops
(Caron et al., 2020)."""

from dataclasses import replace

import torch.nn as nn
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

from byol_bench.models.view_recipe import ViewRecipe


class SwAV(nn.Module):
    # lightly's SwaVTransform: two global crops, and local_crops small ones of local_crop_size (null: half
    # the image's side), every crop with the same colour ops.
    views = (ViewRecipe(min_scale=0.14, brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_prob=0.5),) * 2
    local_view = replace(views[0], min_scale=0.05, max_scale=0.14)
    config_keys = {"prototypes": 512, "local_crops": 6, "local_crop_size": None}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SwaVProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
        self.prototypes = SwaVPrototypes(cfg.projection_dim, cfg.prototypes)
        # In a DDP trial Sinkhorn-Knopp balances the assignments over the whole global batch.
        self.criterion = SwaVLoss(sinkhorn_gather_distributed=True)

    def forward(self, *views):  # the training loss of one batch: two global crops, then the local ones
        self.prototypes.normalize()  # back onto the unit sphere before every step
        scores = [self.prototypes(F.normalize(self.projection_head(self.backbone(view)), dim=1)) for view in views]
        return self.criterion(scores[:2], scores[2:]).squeeze(0)  # SwaVLoss returns shape (1,)
