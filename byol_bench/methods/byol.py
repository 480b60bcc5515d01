"""BYOL: an online network predicts the projection of an EMA target network (Grill et al., 2020)."""

import copy

import torch.nn as nn
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum

from byol_bench.views import ViewRecipe


class BYOL(nn.Module):
    views = (ViewRecipe(), ViewRecipe(blur_prob=0.1, solarize_prob=0.2))  # lightly's BYOLView1/2Transform
    knobs = ("momentum_schedule", "predictor_hidden_dim")  # the method-specific config keys it reads

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone  # the ONLINE backbone is the one evaluated (not the target: lightly#1471)
        self.projection_head = BYOLProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
        predictor_hidden = cfg.predictor_hidden_dim or cfg.hidden_dim
        self.prediction_head = BYOLPredictionHead(cfg.projection_dim, predictor_hidden, cfg.projection_dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection_head)
        self.criterion = NegativeCosineSimilarity()

    def online(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x)))

    def target(self, x):
        return self.target_projection_head(self.target_backbone(x)).detach()

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        return 0.5 * (self.criterion(self.online(view0), self.target(view1)) + self.criterion(self.online(view1), self.target(view0)))

    def update_target(self, momentum: float) -> None:
        # One pair of fused foreach calls over every parameter (lightly's update_momentum), not one per module.
        update_momentum(nn.ModuleList([self.backbone, self.projection_head]),
                        nn.ModuleList([self.target_backbone, self.target_projection_head]), m=momentum)
