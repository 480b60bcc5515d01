"""The method registry: a new method is one file in this folder and one line here.

A method is an ``nn.Module`` whose ``forward(*views)`` returns the training loss of one batch of views (so
that DDP can wrap it), with a ``backbone`` (the part evaluated), a ``projection_head`` (whose output the
collapse indicators watch), ``views`` (the recipes of its two global views) and ``knobs`` (the
method-specific config keys it reads, each with the method's default; None where the method derives it
from other knobs), so that a sweep crosses them only with this method. A multi-crop method reads
``local_crops`` and ``local_crop_size`` and has a ``local_view`` recipe: its forward gets the two global
views, then the local crops. A method with a target network reads ``momentum_schedule`` and has
``update_target(momentum)``; a loss or memory that spans the batch covers the whole global batch in a DDP
trial (lightly's ``gather_distributed``), so that every rank computes what one worker would. A method that
the suite's optimizer defaults (SGD at lr 0.06 x batch/128, weight decay 5e-4) do not train (Barlow Twins
collapses, VICReg diverges) has lightly's benchmark settings for it in ``trains_with``: the optimizer knobs
a trial of it takes unless they are given.
"""

from byol_bench.models.methods.barlowtwins import BarlowTwins
from byol_bench.models.methods.byol import BYOL
from byol_bench.models.methods.dcl import DCL
from byol_bench.models.methods.dino import DINO
from byol_bench.models.methods.moco import MoCo
from byol_bench.models.methods.nnclr import NNCLR
from byol_bench.models.methods.simclr import SimCLR
from byol_bench.models.methods.simsiam import SimSiam
from byol_bench.models.methods.swav import SwAV
from byol_bench.models.methods.vicreg import VICReg

METHODS = {
    "byol": BYOL,
    "simclr": SimCLR,
    "simsiam": SimSiam,
    "moco": MoCo,
    "barlowtwins": BarlowTwins,
    "vicreg": VICReg,
    "nnclr": NNCLR,
    "dcl": DCL,
    "dino": DINO,
    "swav": SwAV,
}


def uses_momentum(method) -> bool:
    return "momentum_schedule" in method.knobs


def multi_crop(method) -> bool:
    return "local_crops" in method.knobs
