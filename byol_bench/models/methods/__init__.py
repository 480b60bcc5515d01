"""The method registry: the built-in methods, one file each in this folder, and those of installed plug-in packages
(``models.plugins``), each implementing ``models.method.Method`` (its docstring and docs/extending.md say what a method
is and reads)."""

from byol_bench.models.method import Method, interface_problems
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
from byol_bench.models.plugins import BUILT_IN, METHOD_GROUP, load_plugins

METHODS: dict[str, type[Method]] = {
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
BUILT_IN_METHODS = tuple(METHODS)
METHOD_ORIGINS = dict.fromkeys(METHODS, BUILT_IN)  # where each method comes from: built-in, or "package version"
load_plugins(METHOD_GROUP, "method", METHODS, METHOD_ORIGINS, interface_problems)


def uses_momentum(method) -> bool:
    return "momentum_schedule" in method.config_keys


def multi_crop(method) -> bool:
    return "local_crops" in method.config_keys
