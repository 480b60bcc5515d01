"""What more than one method is built from: the EMA target network (BYOL, MoCo, DINO) and memory banks
kept in checkpoints (MoCo's queue, NNCLR's support set)."""

import copy

import torch.nn as nn
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.models.utils import deactivate_requires_grad, update_momentum


class WithTarget(nn.Module):
    """A method whose target is a frozen copy of its backbone and projection head that follows them by EMA.
    Its ``__init__`` calls ``copy_to_target()`` once the online network is built."""

    def copy_to_target(self, head_twin: nn.Module | None = None) -> None:
        """The target: copies of the backbone and projection head. A head that cannot be deep-copied (DINO's:
        torch's weight_norm) passes an untrained ``head_twin`` instead, which takes the head's weights."""
        self.target_backbone = copy.deepcopy(self.backbone)
        if head_twin is None:
            head_twin = copy.deepcopy(self.projection_head)
        else:
            head_twin.load_state_dict(self.projection_head.state_dict())
        self.target_projection_head = head_twin
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection_head)

    def target(self, x):
        return self.target_projection_head(self.target_backbone(x)).detach()

    def update_target(self, momentum: float) -> None:
        # One pair of fused foreach calls over every parameter (lightly's update_momentum), not one per module.
        update_momentum(nn.ModuleList([self.backbone, self.projection_head]),
                        nn.ModuleList([self.target_backbone, self.target_projection_head]), m=momentum)


def kept_in_checkpoints(bank: MemoryBankModule) -> MemoryBankModule:
    """``bank`` with its entries in the method's state_dict: lightly leaves them out, and a trial resumed from a
    checkpoint would go on with random entries instead of the ones it had queued."""
    for name in ("bank", "bank_ptr"):
        bank.register_buffer(name, getattr(bank, name), persistent=True)
    return bank
