"""The method registry: a new method is one file in this folder and one line here.

A method is an ``nn.Module`` with a ``backbone`` (the part evaluated), ``views`` (two
``ViewRecipe``), ``uses_momentum`` (whether a momentum schedule applies), ``training_loss(view0,
view1)`` and, when ``uses_momentum``, ``update_target(momentum)``.
"""

from byol_bench.methods.byol import BYOL
from byol_bench.methods.simclr import SimCLR
from byol_bench.methods.simsiam import SimSiam

METHODS = {
    "byol": BYOL,
    "simclr": SimCLR,
    "simsiam": SimSiam,
}
