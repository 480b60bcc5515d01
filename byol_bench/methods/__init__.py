"""The method registry: a new method is one file in this folder and one line here.

A method is an ``nn.Module`` whose ``forward(view0, view1)`` returns the training loss (so that DDP
can wrap it), with a ``backbone`` (the part evaluated), a ``projection_head`` (whose output the
collapse indicators watch), ``views`` (two ``ViewRecipe``) and ``knobs`` (the method-specific config
keys it reads, so that a sweep crosses them only with this method). A method with a target network
lists ``momentum_schedule`` in its knobs and has ``update_target(momentum)``; a loss that compares
samples across the batch gathers them from every rank itself (lightly's ``gather_distributed``).
"""

from byol_bench.methods.byol import BYOL
from byol_bench.methods.simclr import SimCLR
from byol_bench.methods.simsiam import SimSiam

METHODS = {
    "byol": BYOL,
    "simclr": SimCLR,
    "simsiam": SimSiam,
}



def uses_momentum(method) -> bool:
    return "momentum_schedule" in method.knobs
