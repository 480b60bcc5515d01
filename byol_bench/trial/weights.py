"""A trial's backbone weights: saved as safetensors with a model card, and loaded from a file or a library's
pretrained weights (``backbone_weights``) for ``byol-bench evaluate``.

Loading is strict and never runs code: a safetensors file, or ``torch.load(weights_only=True)`` of a .pt/.pth file.
The usual wrappers' prefixes (``module.``, ``backbone.``, ``encoder.``, ``model.``) are found and stripped and a
classification head (the backbone has none) is left out; any other difference from the backbone is one line naming
the first missing and unexpected keys or the first shape that differs.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from byol_bench.errors import UserError
from byol_bench.protocol import PROTOCOL
from byol_bench.trial.result import TrialResult, values

PREFIXES = ("module.", "backbone.", "encoder.", "model.")
HEADS = ("fc.", "head.", "heads.", "classifier.")  # a classifier's weights: the suite's backbones end before it
LOAD_IN_PYTORCH = """```python
from safetensors.torch import load_file
from byol_bench.models.backbones import build_backbone
backbone, feature_dim = build_backbone({backbone!r}, {channels}, {image_size}, {options!r})
backbone.load_state_dict(load_file("{weights}"))  # backbone(images) -> (N, feature_dim) features
```"""


def backbone_bytes(backbone: nn.Module, metadata: dict[str, str]) -> bytes:
    """The backbone's weights as a safetensors file (contiguous copies: the trial may train channels-last)."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in backbone.state_dict().items()}
    return save(tensors, metadata=metadata)


def read_weights(source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict named by ``source`` (a file, ``torchvision:MODEL.WEIGHTS`` or a timm model's pretrained
    weights ``timm:NAME``) and where it came from (origin, SHA-256 of a file)."""
    family, _, name = source.partition(":")
    if family == "torchvision" and name:
        import torchvision

        model, _, weights = name.partition(".")
        state = torchvision.models.get_model_weights(model)[weights].get_state_dict(progress=False)
        return state, {"source": source, "origin": "torchvision"}
    if family == "timm" and name:
        import timm

        return timm.create_model(name, pretrained=True).state_dict(), {"source": source, "origin": "timm"}
    path = Path(source).expanduser()
    data = path.read_bytes()
    return _tensors(path, data), {"source": str(path), "sha256": hashlib.sha256(data).hexdigest()}


def _tensors(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a weights file; a file that is not one, or that would run code, is refused in one line."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load

            return load(data)
        import io

        found = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to parse an untrusted file (the unpickler raises all kinds) is the same
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"backbone_weights {path}: not a weights file this suite will read ({first[:160]}); give a "
                        "safetensors file or a torch.save'd state_dict of tensors") from None
    for key in ("state_dict", "model", "backbone"):  # a training checkpoint's usual wrappers
        if isinstance(found, dict) and isinstance(found.get(key), dict):
            found = found[key]
    if not isinstance(found, dict) or not all(isinstance(value, torch.Tensor) for value in found.values()):
        raise UserError(f"backbone_weights {path}: holds no state_dict of tensors; save model.state_dict() in it")
    return found


def fit_to(backbone: nn.Module, state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``state`` keyed as ``backbone``'s own state dict: the wrappers' prefixes stripped, a classifier left out;
    else one line naming what differs. Returns the state and what was done to fit it."""
    wanted = backbone.state_dict()
    state, stripped = _strip_prefixes(state, set(wanted))
    ignored = sorted(key for key in state if key not in wanted and key.startswith(HEADS))
    state = {key: value for key, value in state.items() if key not in ignored}
    missing, unexpected = [key for key in wanted if key not in state], [key for key in state if key not in wanted]
    if missing or unexpected:
        raise UserError(f"backbone_weights {source}: not weights of this backbone; missing {_first(missing)}, "
                        f"unexpected {_first(unexpected)}; give the backbone they were trained with (--backbone)")
    for key, tensor in wanted.items():
        if state[key].shape != tensor.shape:
            raise UserError(f"backbone_weights {source}: {key} is {list(state[key].shape)} in the file but "
                            f"{list(tensor.shape)} in the backbone; give the backbone and input channels they were "
                            "trained with (a torchvision ResNet: backbone_options.small_stem=false for ImageNet's stem)")
    return state, {"stripped_prefix": stripped, "ignored_keys": ignored}


def _strip_prefixes(state: dict, wanted: set[str]) -> tuple[dict, str]:
    """``state`` with the leading wrapper prefixes removed while that makes more of its keys the backbone's."""
    stripped = ""
    while True:
        matching = sum(key in wanted for key in state)
        for prefix in PREFIXES:
            trimmed = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
            if sum(key in wanted for key in trimmed) > matching:
                state, stripped = trimmed, stripped + prefix
                break
        else:
            return state, stripped


def _first(keys: list[str]) -> str:
    return "none" if not keys else ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def model_card(result: TrialResult, weights: str, trial: str) -> tuple[str, dict]:
    """The model card of a trial's saved backbone, as Markdown and as JSON: what was trained on what, how it scored
    beside its floors, under which protocol, where and with what it ran, and how to load it."""
    cfg, run = result.config, result.run
    accuracies = [(name, getattr(result.metrics, name), floor) for name, floor in (
        ("knn_top1", result.floors.random_init_knn_top1), ("linear_top1", result.floors.random_init_linear_top1))]
    accuracies += [(name, value, result.floors.extra.get(f"random_init_{name}"))
                   for name, value in result.metrics.extra.items()]
    card = {"trial": trial, "weights": weights, "status": result.status, "method": cfg["method"],
            "backbone": cfg["backbone"], "backbone_options": cfg.get("backbone_options"),
            "image_channels": run.channels, "image_size": run.image_size, "config": cfg,
            "protocol": {key: cfg.get(key) for key in PROTOCOL},
            "data": {"dataset": cfg["dataset"], "pretrain_images": run.pretrain_images,
                     "train_images": run.train_images, "evaluated_images": run.test_images,
                     "evaluated_on": run.evaluated_on},
            "metrics": values(result.metrics), "floors": values(result.floors), "provenance": asdict(result.provenance)}
    load = LOAD_IN_PYTORCH.format(backbone=cfg["backbone"], channels=run.channels, image_size=run.image_size,
                                  options=cfg.get("backbone_options"), weights=weights)
    rows = "\n".join(f"| {name} | {_percent(value)} | {_percent(floor)} |" for name, value, floor in accuracies)
    raw = result.floors.raw_pixels_knn_top1
    markdown = f"""# {cfg['method']} · {cfg['backbone']} · {trial}

Status **{result.status}**. A {cfg['backbone']} backbone pretrained with {cfg['method']} for {cfg['epochs']} epochs on
{run.pretrain_images} {cfg['dataset']} images at {run.image_size} px ({run.channels} channel(s)); evaluated frozen on
{run.test_images} {run.evaluated_on} images.

| metric | this backbone | random-init floor |
|---|---|---|
{rows}

Raw-pixel kNN top-1 floor: {_percent(raw)}. Protocol: {", ".join(f"{key} {cfg.get(key)}" for key in PROTOCOL)}.
Ran on {result.provenance.device_name} (torch {result.provenance.torch}, lightly {result.provenance.lightly}, git
{result.provenance.git_revision}){"; plug-ins: " + ", ".join(f"{k} ({v})" for k, v in result.provenance.plugins.items())
                                   if result.provenance.plugins else ""}. Every knob is in the JSON card beside this file.

## Load it

{load}
"""
    return markdown, card


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"
