"""SimSiam: a predictor and a stop-gradient instead of a target network (Chen & He, 2021)."""

import torch.nn as nn
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules.heads import ProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead

from byol_bench.models.view_recipe import ViewRecipe


class SimSiam(nn.Module):
    views = (ViewRecipe(min_scale=0.2, saturation=0.4, blur_prob=0.5),) * 2  # lightly's SimSiamTransform
    # The method-specific config keys it reads, with its defaults (None: derived from other knobs).
    config_keys = {"predictor_hidden_dim": None, "stop_gradient": True, "projection_layers": 3}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        if cfg.projection_layers == 3:  # the paper's
            self.projection_head = SimSiamProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
        else:  # lightly's CIFAR-10 benchmark: two layers, each with BatchNorm
            self.projection_head = ProjectionHead([
                (feature_dim, cfg.hidden_dim, nn.BatchNorm1d(cfg.hidden_dim), nn.ReLU()),
                (cfg.hidden_dim, cfg.projection_dim, nn.BatchNorm1d(cfg.projection_dim), None)])
        # The paper's bottleneck predictor: narrower than the projection by default.
        predictor_hidden = cfg.predictor_hidden_dim or cfg.projection_dim // 2
        self.prediction_head = SimSiamPredictionHead(cfg.projection_dim, predictor_hidden, cfg.projection_dim)
        self.criterion = NegativeCosineSimilarity()
        self.stop_gradient = cfg.stop_gradient

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        z0 = self.projection_head(self.backbone(view0))
        z1 = self.projection_head(self.backbone(view1))
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        if self.stop_gradient:  # without it SimSiam collapses: kept as a switch for collapse tests
            z0, z1 = z0.detach(), z1.detach()
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
