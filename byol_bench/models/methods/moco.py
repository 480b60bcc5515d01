"""MoCo v2: queries from the online network, keys from its EMA copy, negatives from a queue of past keys
(He et al., 2020; Chen et al., 2020)."""

import torch.nn as nn
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead

from byol_bench.models.methods.shared import WithTarget, kept_in_checkpoints
from byol_bench.models.methods.simsiam import SimSiam


class MoCo(WithTarget):
    views = SimSiam.views  # lightly's MoCoV2Transform: the same ops and strengths as SimSiamTransform
    config_keys = {"momentum_schedule": "constant:0.99", "temperature": 0.1, "memory_bank_size": 4096}

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg):
        super().__init__()
        self.backbone = backbone
        self.projection_head = MoCoProjectionHead(feature_dim, cfg.hidden_dim, cfg.projection_dim)
        self.copy_to_target()
        # The queue of negatives (NT-Xent with a memory bank is MoCo's InfoNCE). In a DDP trial every rank
        # queues the keys of the whole global batch, so that each holds the queue one worker would.
        self.criterion = NTXentLoss(temperature=cfg.temperature, gather_distributed=True,
                                    memory_bank_size=(cfg.memory_bank_size, cfg.projection_dim))
        kept_in_checkpoints(self.criterion.memory_bank)

    def forward(self, view0, view1):  # the training loss of one batch of view pairs
        # Symmetrised as in lightly's benchmark: each view is once the query and once the key; each half
        # queues its keys after contrasting its queries with the queue.
        query0, query1 = self.projection_head(self.backbone(view0)), self.projection_head(self.backbone(view1))
        return 0.5 * (self.criterion(query0, self.target(view1)) + self.criterion(query1, self.target(view0)))
