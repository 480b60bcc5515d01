"""NNCLR: each projection's nearest neighbour in a support set of past projections is contrasted with the
other view's prediction (Dwibedi et al., 2021)."""

import torch.nn as nn
from lightly.loss import NTXentLoss
from lightly.models.modules import NNCLRPredictionHead, NNMemoryBankModule, SimCLRProjectionHead

from byol_bench.models.methods.shared import kept_in_checkpoints
from byol_bench.models.methods.simclr import SimCLR


class NNCLR(nn.Module):
    views = SimCLR.views  # lightly's NNCLR example uses SimCLRTransform
    # The method-specific config keys it reads, with its defaults (None: derived from other knobs).
    config_keys = {"temperature": 0.5, "memory_bank_size": 4096, "predictor_hidden_dim": None, "projection_layers": 3}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        # NNCLR's head, BatchNorm after every layer (lightly's NNCLRProjectionHead is this at three layers).
        self.projection_head = SimCLRProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim,
                                                    num_layers=cfg.projection_layers)
        predictor_hidden = cfg.predictor_hidden_dim or cfg.hidden_dim
        self.prediction_head = NNCLRPredictionHead(cfg.projection_dim, predictor_hidden, cfg.projection_dim)
        self.support_set = kept_in_checkpoints(NNMemoryBankModule(size=(cfg.memory_bank_size, cfg.projection_dim)))
        # NNMemoryBankModule does not pass gather_distributed on to its memory bank: set here, so that in a DDP
        # trial every rank adds the projections of the whole global batch and holds one worker's support set.
        self.support_set.gather_distributed = True
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True)

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        z0, z1 = self.projection_head(self.backbone(view0)), self.projection_head(self.backbone(view1))
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        # Nearest neighbours stand in for the projections; view 1's projections then join the support set.
        nn0 = self.support_set(z0.detach(), update=False)
        nn1 = self.support_set(z1.detach(), update=True)
        return 0.5 * (self.criterion(nn0, p1) + self.criterion(nn1, p0))
