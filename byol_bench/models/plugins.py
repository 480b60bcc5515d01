"""Methods and backbones from other installed packages, found through Python entry points.

A package offers them in its ``pyproject.toml`` (examples/byol-bench-tico is one such package)::

    [project.entry-points."byol_bench.methods"]
    tico = "byol_bench_tico.method:TiCo"          # a class implementing models.method.Method

    [project.entry-points."byol_bench.backbones"]
    wide-cnn = "byol_bench_tico.backbone:wide_cnn"  # a models.method.BackboneBuilder

The registries (``models.methods.METHODS``, ``models.backbones.BACKBONES``) load them when they are built, so every
process that imports the package sees them: the sweep's driver, Ray's workers on every node and torchrun's ranks,
wherever the plug-in's package is installed. A plug-in that fails to import, or does not implement the interface,
is left out and recorded (``BROKEN``): the built-ins still work, and naming it is one line saying why.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

METHOD_GROUP = "byol_bench.methods"
BACKBONE_GROUP = "byol_bench.backbones"
BUILT_IN = "built-in"


@dataclass(frozen=True)
class Broken:
    """A plug-in that could not be used: its kind (method, backbone), name, package and why."""
    kind: str
    name: str
    package: str
    reason: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name} (from {self.package}) cannot be used: {self.reason}; fix or uninstall that package"


BROKEN: list[Broken] = []


def load_plugins(group: str, kind: str, registry: dict, origins: dict[str, str],
                 problems: Callable[[object], list[str]]) -> None:
    """Add the entry points of ``group`` to ``registry``, each one's package and version to ``origins``; those
    that fail to load, shadow a name already taken, or have ``problems`` go to ``BROKEN`` instead."""
    for entry in sorted(entry_points(group=group), key=lambda found: found.name):
        package = f"{entry.dist.name} {entry.dist.version}" if entry.dist is not None else entry.value
        reason = None
        if entry.name in registry:
            reason = f"the name is taken by the {origins[entry.name]} {kind} {entry.name}; rename the entry point"
        else:
            try:
                loaded = entry.load()
                reason = "; ".join(problems(loaded)) or None
            except Exception as error:  # any error of another package's import: recorded, never fatal
                reason = f"importing {entry.value} raised {type(error).__name__}: {error}".splitlines()[0]
        if reason is not None:
            BROKEN.append(Broken(kind, entry.name, package, reason))
            continue
        registry[entry.name] = loaded
        origins[entry.name] = package


def broken(kind: str, name: str) -> Broken | None:
    """The broken plug-in of that kind and name, if one is installed."""
    return next((found for found in BROKEN if found.kind == kind and found.name == name), None)
