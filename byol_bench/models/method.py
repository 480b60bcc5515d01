"""The interface every method implements, a built-in one or another package's: what a trial builds, calls and
reads. docs/extending.md walks through it with an example.

A method is an ``nn.Module`` built as ``Method(backbone, feature_dim, cfg)`` whose ``forward(*views)`` returns the
training loss of one batch of views (so that DDP can wrap it). The trial evaluates its ``backbone`` and watches
its ``projection_head``'s output for collapse; it draws the views from the method's ``views`` recipes.
``config_keys`` names the config keys the method reads besides the shared ones, each with its default (None:
derived from other config keys), so that a sweep crosses them only with this method and the config fills them in.
Optionally, ``options`` are the method's own hyperparameters, which are not config keys (a plug-in's temperature, say), each with
its default: a trial gives them as ``method_options`` (``--method-option name=value``, a sweep axis
``method_options.name``) and the method reads ``cfg.method_options[name]``, filled in with the defaults and checked
against ``options`` before anything runs. Three optional parts:

- a target network: the method reads ``momentum_schedule`` and has ``update_target(momentum)``, called after every
  step with the schedule's momentum (``methods.shared.WithTarget`` is one);
- local crops: the method reads ``local_crops`` and ``local_crop_size`` and has a ``local_view`` recipe; its forward
  gets the two global views, then the local crops;
- optimizer defaults: ``trains_with``, the optimizer knobs a trial of the method takes unless they are given (Barlow
  Twins and VICReg train with LARS at their own lr).

In a DDP trial every loss or memory that spans the batch must cover the whole global batch (lightly's
``gather_distributed``), so that every rank computes what one worker would.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Protocol, runtime_checkable

from torch import Tensor, nn

from byol_bench.models.view_recipe import ViewRecipe

# A backbone builder: (input channels, image size, **backbone_options) -> (the module, its feature width). The module
# maps (N, C, H, W) images to (N, feature width) features.
BackboneBuilder = Callable[..., tuple[nn.Module, int]]


@runtime_checkable
class Method(Protocol):
    views: ClassVar[tuple[ViewRecipe, ViewRecipe]]  # the recipes of the two global views
    config_keys: ClassVar[dict[str, object]]  # the config keys it reads besides the shared ones, with its defaults
    backbone: nn.Module  # what is evaluated
    projection_head: nn.Module  # whose outputs the collapse indicators watch

    def __init__(self, backbone: nn.Module, feature_dim: int, cfg) -> None: ...

    def forward(self, *views: Tensor) -> Tensor: ...


def method_options(method: type) -> dict[str, object]:
    """A method's own hyperparameters and their defaults (none unless it declares ``options``)."""
    return getattr(method, "options", {})


def interface_problems(method: type) -> list[str]:
    """What keeps a method class from the interface, as lines (none: it conforms); read from the class alone."""
    problems = []
    if not (isinstance(method, type) and issubclass(method, nn.Module)):
        return ["is not an nn.Module class"]
    views = getattr(method, "views", None)
    if not (isinstance(views, tuple) and len(views) == 2 and all(isinstance(view, ViewRecipe) for view in views)):
        problems.append("views: give a tuple of two ViewRecipe, its global views")
    config_keys = getattr(method, "config_keys", None)
    if not isinstance(config_keys, dict):
        problems.append("config_keys: give a dict of the config keys it reads and their defaults ({} for none)")
        config_keys = {}
    if ("momentum_schedule" in config_keys) != callable(getattr(method, "update_target", None)):
        problems.append("a target network reads momentum_schedule and has update_target(momentum): give both or neither")
    if ("local_crops" in config_keys) != isinstance(getattr(method, "local_view", None), ViewRecipe):
        problems.append("local crops: a method reads local_crops and has a local_view recipe: give both or neither")
    options = getattr(method, "options", {})
    if not isinstance(options, dict) or not all(isinstance(name, str) and name.isidentifier() for name in options):
        problems.append("options: give a dict of its own hyperparameters' names and their defaults")
    elif set(options) & set(config_keys):
        problems.append(f"options: {', '.join(sorted(set(options) & set(config_keys)))} also in config_keys; keep one")
    if not isinstance(getattr(method, "trains_with", {}), dict):
        problems.append("trains_with: give a dict of optimizer knobs")
    return problems
