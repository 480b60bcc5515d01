"""A tune file's search section, checked before anything runs; the chosen values and the final runs (no Ray)."""

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from byol_bench.cli import main
from byol_bench.data.datasets import load_data, split_validation
from byol_bench.errors import UserError
from byol_bench.plan.tune_file import chosen, final_runs, load_tune
from conftest import TINY

PRESETS = Path(__file__).resolve().parent.parent / "benchmarks" / "sweeps"
SPACE = {"all": {"lr": {"loguniform": [0.02, 1.0]}}, "simclr": {"temperature": {"choice": [0.1, 0.5]}}}


def write_tune(folder: Path, search: dict, trial: dict | None = None, methods=("byol", "simclr")) -> Path:
    path = folder / "tune.yaml"
    search = {"space": SPACE, "budget": {"trials": 4}, **search}
    path.write_text(yaml.safe_dump({"name": "t", "trial": {**TINY, **(trial or {})}, "axes": {"method": list(methods)},
                                    "search": search}))
    return path


@pytest.mark.parametrize("search, trial, message", [
    ({"space": {"all": {"lr": {"loguniform": [0.02, 1.0]}, "learning_rate": {"uniform": [0, 1]}}}}, None,
     "search.space.all.learning_rate: unknown knob"),
    ({"space": {"all": {"temperature": {"choice": [0.1, 0.5]}}}}, None,
     "search.space.all.temperature: method byol does not read it"),
    ({"space": {"all": {"lr": {"uniform": [0.5, 0.5]}}}}, None, "the range [0.5, 0.5] is empty"),
    ({"space": {"all": {"lr": {"uniform": [1.0, 0.1]}}}}, None, "the range [1.0, 0.1] is empty"),
    ({"space": {"all": {"weight_decay": {"loguniform": [0, 0.001]}}}}, None, "loguniform needs low > 0"),
    ({"space": {"simclr": {"temperature": {"choice": []}}, "byol": {"lr": {"choice": [0.1]}}}}, None,
     "search.space.simclr.temperature: choice needs a non-empty list"),
    ({"space": {"all": {"lr": {"choice": [0.1, -0.2]}}}}, None, "lr must be above 0, got -0.2"),
    ({"space": {"all": {"hidden_dim": {"uniform": [64, 128]}}}}, None, "search it with choice"),
    ({"space": {"all": {"epochs": {"choice": [2, 4]}}}}, None, "part of the protocol"),
    ({"space": {"dino": {"lr": {"choice": [0.1]}}}}, None, "search.space.dino: not one of the file's methods"),
    ({"space": {"simclr": {"temperature": {"choice": [0.1]}}}}, None, "nothing to search for method byol"),
    ({"budget": {"trials": 0}}, None, "search.budget.trials: 0 is not valid"),
    ({"budget": {}}, None, "search.budget: give each method's budget"),
    ({"scheduler": {"grace_period": 5}}, None, "more than the trials' 2 epochs"),
    ({"validation": 1.5}, None, "search.validation: 1.5 is not below 1"),
    ({}, {"seed": 3}, "trial.seed: the search sets it"),
])
def test_a_bad_search_is_refused_in_one_line_before_anything_runs(tmp_path, capsys, search, trial, message):
    path = write_tune(tmp_path, search, trial)
    assert main(["tune", str(path), "--results-dir", str(tmp_path / "results")]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "results").exists()


def test_a_tune_file_is_not_a_sweep_and_a_sweep_file_not_a_tune(tmp_path, capsys):
    assert main(["sweep", str(write_tune(tmp_path, {})), "--dry-run"]) == 2
    assert "run it with 'byol-bench tune" in capsys.readouterr().err
    assert main(["tune", str(PRESETS / "quick.yaml"), "--dry-run"]) == 2
    assert "no 'search' section" in capsys.readouterr().err


@pytest.mark.parametrize("preset, methods", [("tune-quick", 2), ("tune-gpu", 10)])
def test_the_tune_presets_dry_run(preset, methods, capsys):
    assert main(["tune", str(PRESETS / f"{preset}.yaml"), "--dry-run"]) == 0
    assert f"{methods} methods" in capsys.readouterr().out


def test_the_best_full_trial_is_chosen_and_the_final_runs_hold_it_and_the_defaults(tmp_path):
    search = load_tune(write_tune(tmp_path, {"final_seeds": [0, 1]}))
    rows = pd.DataFrame([  # SimCLR's best score belongs to a trial ASHA stopped after one epoch: not comparable
        {"method": "simclr", "lr": 0.123456, "temperature": 0.1, "knn_top1": 0.5, "epochs": 2, "status": "ok"},
        {"method": "simclr", "lr": 0.3, "temperature": 0.5, "knn_top1": 0.9, "epochs": 1, "status": "ok"},
        {"method": "simclr", "lr": 0.2, "temperature": 0.5, "knn_top1": None, "epochs": 2, "status": "diverged"},
        {"method": "byol", "lr": 0.06, "temperature": None, "knn_top1": 0.4, "epochs": 2, "status": "ok"}])
    best = chosen(search, rows)
    assert best == {"simclr": {"lr": 0.123, "temperature": 0.1}, "byol": {"lr": 0.06}}
    sweep, planned = final_runs(search, best)
    ids = [trial.trial_id for trial in planned]
    # BYOL's chosen lr is its default: one setting, not two
    assert ids == ["method=byol,lr=0.06,seed=0", "method=byol,lr=0.06,seed=1",
                   "method=simclr,lr=0.123,temperature=0.1,seed=0", "method=simclr,lr=0.123,temperature=0.1,seed=1",
                   "method=simclr,lr=0.06,temperature=0.5,seed=0", "method=simclr,lr=0.06,temperature=0.5,seed=1"]
    assert list(sweep.axes) == ["method", "lr", "temperature", "seed"] and not sweep.search
    assert all("validation" not in trial.knobs and trial.knobs["test_subset"] == TINY["test_subset"]
               for trial in planned)  # the final runs measure on the test split


def test_validation_holds_out_a_stratified_part_of_the_train_split_in_place_of_the_test_split():
    data = load_data("synthetic", subset=300, seed=0, image_size=16, validation=0.2)
    reference = load_data("synthetic", subset=300, seed=0, image_size=16)
    assert len(data.test_labels) == 60 and len(data.train_labels) == 240
    assert torch.bincount(data.test_labels).tolist() == [6] * 10  # stratified
    train = {image.numpy().tobytes() for image in reference.train_images}
    held_out = {image.numpy().tobytes() for image in data.test_images}
    assert held_out <= train and not held_out & {image.numpy().tobytes() for image in data.train_images}
    assert data.pretrain_images.shape == data.train_images.shape  # pretraining never sees the held-out images
    with pytest.raises(UserError, match="holds out 0"):
        split_validation(data.train_images, data.train_labels, 0.001, seed=0)
