"""BYOL: an online network predicts the projection of an EMA target network (Grill et al., 2020)."""

import torch.nn as nn
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from byol_bench.models.methods.shared import WithTarget
from byol_bench.models.view_recipe import ViewRecipe


class BYOL(WithTarget):
    views = (ViewRecipe(), ViewRecipe(blur_prob=0.1, solarize_prob=0.2))  # lightly's BYOLView1/2Transform
    # The method-specific config keys it reads, with its defaults (None: derived from other knobs).
    config_keys = {"momentum_schedule": "cosine:0.99-1.0", "predictor_hidden_dim": None}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone  # the ONLINE backbone is the one evaluated (not the target: lightly#1471)
        self.projection_head = BYOLProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
        predictor_hidden = cfg.predictor_hidden_dim or cfg.hidden_dim
        self.prediction_head = BYOLPredictionHead(cfg.projection_dim, predictor_hidden, cfg.projection_dim)
        self.copy_to_target()
        self.criterion = NegativeCosineSimilarity()

    def online(self, x):
        return self.prediction_head(self.projection_head(self.backbone(x)))

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        return 0.5 * (self.criterion(self.online(view0), self.target(view1)) + self.criterion(self.online(view1), self.target(view0)))
