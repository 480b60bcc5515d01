"""DINO: a student matches the centred, sharpened output of an EMA teacher that sees only the global
crops, over every crop (Caron et al., 2021)."""

import torch.nn as nn
from lightly.loss import DINOLoss
from lightly.models.modules.heads import DINOProjectionHead, ProjectionHead

from byol_bench.models.methods.shared import WithTarget
from byol_bench.models.view_recipe import ViewRecipe


class DINO(WithTarget):
    # lightly's DINOTransform (its default colour jitter is at half strength): two global crops...
    views = (ViewRecipe(min_scale=0.4), ViewRecipe(min_scale=0.4, blur_prob=0.1, solarize_prob=0.2))
    # ... and local_crops small ones of local_crop_size (null: half the image's side).
    local_view = ViewRecipe(min_scale=0.05, max_scale=0.4, blur_prob=0.5)
    config_keys = {"momentum_schedule": "constant:0.99", "prototypes": 2048, "local_crops": 6, "local_crop_size": None,
             "projection_layers": 3}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.projection_head = self.head(feature_dim, cfg)
        self.copy_to_target(head_twin=self.head(feature_dim, cfg))  # the teacher, starting as the student
        # The centre is the teacher outputs' mean over the whole global batch: lightly all-reduces it.
        self.criterion = DINOLoss(output_dim=cfg.prototypes)

    @staticmethod
    def head(feature_dim: int, cfg) -> DINOProjectionHead:
        # projection_dim is the bottleneck before the weight-normalised last layer of `prototypes` outputs.
        head = DINOProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim, cfg.prototypes, batch_norm=True)
        if cfg.projection_layers == 2:  # lightly's CIFAR-10 benchmark: a two-layer MLP before the bottleneck
            head.layers = ProjectionHead([(feature_dim, cfg.hidden_dim, nn.BatchNorm1d(cfg.hidden_dim), nn.GELU()),
                                          (cfg.hidden_dim, cfg.projection_dim, None, None)]).layers
        return head

    def forward(self, *views):  # the training loss of one batch: two global crops, then the local ones
        teacher = [self.target(view) for view in views[:2]]
        student = [self.projection_head(self.backbone(view)) for view in views]
        return self.criterion(teacher, student)
