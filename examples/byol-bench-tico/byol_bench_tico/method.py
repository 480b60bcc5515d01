"""TiCo: transformation invariance and covariance contrast (Zhu et al., 2022), built from lightly's head and loss.

An online network (backbone, projection head) is pulled towards an EMA target of itself on the other view, while the
covariance contrast term, a running covariance of the online projections, keeps the embeddings from collapsing.
"""

import copy

import torch
from lightly.loss import TiCoLoss
from lightly.models.modules.heads import TiCoProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from byol_bench.models.view_recipe import ViewRecipe


class TiCo(nn.Module):
    # BYOL's two views, as lightly's TiCoTransform draws them.
    views = (ViewRecipe(), ViewRecipe(blur_prob=0.1, solarize_prob=0.2))
    # A target network: the config's momentum schedule drives update_target (the paper's cosine 0.99 -> 1).
    config_keys = {"momentum_schedule": "cosine:0.99-1.0"}
    # TiCo's own hyperparameters (--method-option beta=0.8): the covariance's EMA coefficient, the contrast's weight.
    options = {"beta": 0.9, "rho": 8.0}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.projection_head = TiCoProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection_head)
        options = cfg.method_options
        # Over the global batch in a DDP trial, so that two ranks train what one worker would.
        self.criterion = TiCoLoss(beta=options["beta"], rho=options["rho"], gather_distributed=True)
        # The running covariance as a buffer: lightly keeps it in a plain attribute, which a checkpoint would lose.
        del self.criterion.C
        self.criterion.register_buffer("C", torch.zeros(cfg.projection_dim, cfg.projection_dim))

    def forward(self, view0, view1):
        online0, online1 = (self.projection_head(self.backbone(view)) for view in (view0, view1))
        with torch.no_grad():
            target0, target1 = (self.target_projection_head(self.target_backbone(view)) for view in (view0, view1))
        # Symmetrised; the running covariance moves once per step.
        return 0.5 * (self.criterion(online0, target1, update_covariance_matrix=False) + self.criterion(online1, target0))

    def update_target(self, momentum: float) -> None:
        update_momentum(self.backbone, self.target_backbone, m=momentum)
        update_momentum(self.projection_head, self.target_projection_head, m=momentum)
