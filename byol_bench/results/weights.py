"""A trial's backbone weights and model card on disk, each file written whole."""

from __future__ import annotations

from pathlib import Path

from byol_bench.results.tables import write_atomic, write_json
from byol_bench.trial.result import TrialResult
from byol_bench.trial.weights import model_card

WEIGHTS_FOLDER = "weights"  # a sweep's: a folder per trial, holding WEIGHTS_FILE and the model card (CARD_STEM.md, .json)
WEIGHTS_FILE, CARD_STEM = "backbone.safetensors", "model-card"


def keep_weights(weights: bytes, result: TrialResult, trial: str, weights_path: Path, card_stem: Path) -> Path:
    """``weights`` (safetensors) at ``weights_path``, its model card at ``card_stem``.md and .json; returns the
    weights' path."""
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(weights_path, weights)
    write_card(result, trial, weights_path, card_stem)
    return weights_path


def write_card(result: TrialResult, trial: str, weights_path: Path, card_stem: Path) -> None:
    """The model card of the weights at ``weights_path``: ``card_stem``.md and .json."""
    markdown, card = model_card(result, weights_path.name, trial)
    write_atomic(card_stem.with_name(f"{card_stem.name}.md"), markdown.encode())
    write_json(card_stem.with_name(f"{card_stem.name}.json"), card)


def train_weights_paths(out: Path) -> tuple[Path, Path]:
    """Where ``byol-bench train --out X.json`` keeps its backbone and model card: beside it, X.backbone.safetensors
    and X.model-card.md/.json."""
    return out.with_name(f"{out.stem}.{WEIGHTS_FILE}"), out.with_name(f"{out.stem}.{CARD_STEM}")
