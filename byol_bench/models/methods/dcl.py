"""DCL: SimCLR's contrastive loss without the positive pair in its denominator (Yeh et al., 2022)."""

import torch.nn as nn
from lightly.loss import DCLLoss
from lightly.models.modules import SimCLRProjectionHead

from byol_bench.models.methods.simclr import SimCLR


class DCL(nn.Module):
    views = SimCLR.views  # lightly's DCL example uses SimCLRTransform
    config_keys = {"temperature": 0.1}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
        # In a DDP trial each rank contrasts its views with the whole global batch (a no-op on one worker).
        self.criterion = DCLLoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        return self.criterion(self.projection_head(self.backbone(view0)), self.projection_head(self.backbone(view1)))
