"""A report's source as DataFrames: a sweep results folder, or one trial JSON. Reading writes nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from byol_bench.config import resolved_config
from byol_bench.errors import UserError
from byol_bench.plan.tune_file import SEARCH_RECORD, SEARCH_TABLE, SearchRecord
from byol_bench.trial.result import TrialResult
from byol_bench.results.tables import (EMBEDDING_COLUMNS, FLOORS, METRICS, NOT_READ, axis_values, embedding_rows,
                                       epoch_rows, setting_axes, trial_row)

# One row of every results table: a setting, whose seeds are its samples. Trials that differ only in their DDP
# workers (a scaling study at one global batch) are different settings, not seeds of one; so are trials that differ
# in any other axis of the sweep (Results.group adds those).
GROUP = ["method", "global_batch_size", "momentum_schedule", "workers"]
REQUIRED = ("trial_id", "status", "error", "method", "batch_size", "momentum_schedule", *METRICS, *FLOORS)
# write_tables copies these trial columns into the epochs table; the trials table's filled-in values replace them.
EPOCH_AXES = ["method", "batch_size", "momentum_schedule", "seed"]
SOURCE_HINT = "give a sweep results folder (results/<sweep>) or a trial JSON written by 'byol-bench train --out'"


@dataclass
class Results:
    """One source's trials (every status) and epochs, with what the report needs filled in."""

    name: str
    source: Path
    report_dir: Path  # where this source's report goes (created only when a report is written)
    trials: pd.DataFrame
    epochs: pd.DataFrame
    manifest: dict
    other_axes: list[str]  # the sweep's axes beyond GROUP's (learning rate, temperature, ...): columns of trials
    compute_unit: str  # "CPU-hours" or "GPU-hours", the unit of the trials' compute_hours column
    compute_basis: str  # how compute_hours was reckoned
    embeddings: pd.DataFrame  # the trials' embedding maps, a row per point (results.EMBEDDING_COLUMNS)
    search: pd.DataFrame | None = None  # a tuned comparison's search trials (search.parquet), with compute_hours
    search_record: SearchRecord | None = None  # and what search.json records of it

    @property
    def finished(self) -> pd.DataFrame:
        return self.trials[self.trials["status"] == "ok"]

    @property
    def group(self) -> list[str]:
        """The columns that make a setting."""
        return [*GROUP, *self.other_axes]


def load_results(source: Path) -> Results:
    """A sweep results folder (reported into itself), or one trial JSON (reported into ``<stem>-report/``)."""
    source = Path(source)
    if source.is_dir():
        trials, epochs, embeddings = _read_tables(source)
        results = _results(source.name, source, source, trials, epochs, embeddings,
                           _read_manifest(source / "manifest.json"))
        if (source / SEARCH_TABLE).is_file() and (source / SEARCH_RECORD).is_file():
            results.search = _read_parquet(source / SEARCH_TABLE)
            results.search["compute_hours"] = results.search["time_s"] * _held(trials, results.manifest)[0] / 3600
            results.search_record = SearchRecord.read(source / SEARCH_RECORD)
        return results
    if source.is_file():
        trials, epochs, embeddings = _trial_tables(source)
        return _results(source.stem, source, source.with_name(f"{source.stem}-report"), trials, epochs, embeddings, {})
    raise UserError(f"{source} does not exist; {SOURCE_HINT}")


def _read_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    trials_path, epochs_path = folder / "trials.parquet", folder / "epochs.parquet"
    maps_path = folder / "embeddings.parquet"
    if not trials_path.is_file():
        raise UserError(f"{folder} holds no trials.parquet; {SOURCE_HINT} (a sweep writes it when it ends; "
                        "finish an interrupted one with 'byol-bench sweep FILE --resume')")
    trials = _read_parquet(trials_path)
    lacking = [column for column in REQUIRED if column not in trials]
    if lacking:
        raise UserError(f"{trials_path} lacks the columns {', '.join(lacking)}; it was not written by "
                        "'byol-bench sweep': re-run the sweep")
    return (trials, _read_parquet(epochs_path) if epochs_path.is_file() else pd.DataFrame(),
            _read_parquet(maps_path) if maps_path.is_file() else pd.DataFrame(columns=EMBEDDING_COLUMNS))


def _trial_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One trial JSON as the rows a sweep would have recorded for it."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not a readable JSON file ({error}); {SOURCE_HINT}") from None
    if not isinstance(result, dict) or not isinstance(result.get("config"), dict) or "status" not in result:
        raise UserError(f"{path} holds no 'status' and 'config'; {SOURCE_HINT}")
    result = TrialResult.from_dict(result)
    row = trial_row(path.stem, resolved_config(result.config), result.status, result)
    return (pd.DataFrame([row]), pd.DataFrame(epoch_rows(path.stem, result)),
            pd.DataFrame(embedding_rows(path.stem, result), columns=EMBEDDING_COLUMNS))


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} cannot be read as Parquet ({reason}); re-run the sweep to rewrite it") from None


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); restore it or delete it to report without it") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} must hold a JSON object; restore it or delete it to report without it")
    return manifest


def _results(name: str, source: Path, report_dir: Path, trials: pd.DataFrame, epochs: pd.DataFrame,
             embeddings: pd.DataFrame, manifest: dict) -> Results:
    """The tables with the planned trials that never ran, and the columns the report groups and labels by."""
    trials["workers"] = trials["workers"].fillna(1).astype(int) if "workers" in trials else 1  # tables before DDP
    trials = _with_missing_trials(trials, manifest)
    other_axes = [axis for axis in setting_axes(manifest.get("axes") or [])
                  if axis not in (*GROUP, "batch_size") and axis in trials]
    trials = trials.assign(**{axis: axis_values(trials, axis) for axis in ["momentum_schedule", *other_axes]})
    trials["global_batch_size"] = _global_batch_size(trials)
    # Labels of a setting's parts: the figures draw a line, a marker or a shade per distinct label.
    trials["other_knobs"] = [_other_knobs(trial, other_axes) for trial in trials.to_dict("records")]
    trials["variant"] = [_label(schedule, knobs) for schedule, knobs in zip(trials["momentum_schedule"],
                                                                             trials["other_knobs"])]
    trials["setting"] = [_label(f"batch {batch}", variant)
                         for batch, variant in zip(trials["global_batch_size"], trials["variant"])]
    hours, unit, basis = _compute_hours(trials, manifest)
    trials["compute_hours"] = hours
    if "loss" not in epochs:  # no per-epoch rows at all
        epochs = pd.DataFrame(columns=["trial_id", "epoch", "loss"])
    epochs = trials[["trial_id", *GROUP, "setting"]].merge(epochs.drop(columns=EPOCH_AXES, errors="ignore"),
                                                           on="trial_id")
    epochs = epochs.replace([np.inf, -np.inf], np.nan)  # a diverged trial's last loss
    return Results(name, source, report_dir, trials, epochs, manifest, other_axes, unit, basis, embeddings)


def _label(*parts: str) -> str:
    """The parts that say something, joined; NOT_READ when none does."""
    return ", ".join(part for part in parts if part and part != NOT_READ) or NOT_READ


def _other_knobs(trial: dict, other_axes: list[str]) -> str:
    """What sets a trial apart beyond its method, batch and momentum schedule: workers and the sweep's other axes
    ('' when nothing)."""
    parts = [] if trial["workers"] == 1 else [f"{trial['workers']} workers"]
    return ", ".join(parts + [f"{axis} {trial[axis]}" for axis in other_axes if trial[axis] != NOT_READ])


def _with_missing_trials(trials: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    """Trials the manifest's grid plans that the table lacks, as rows with status 'missing'."""
    recorded = set(trials["trial_id"])
    absent = [{"trial_id": planned["trial_id"], "status": "missing",
               **{key: value for key, value in resolved_config(planned.get("knobs", {})).items() if key in trials}}
              for planned in manifest.get("grid") or [] if planned["trial_id"] not in recorded]
    return pd.concat([trials, pd.DataFrame(absent)], ignore_index=True) if absent else trials


def _global_batch_size(trials: pd.DataFrame) -> pd.Series:
    """The global batch a trial recorded; trials without run facts (failed, missing) ran or would run
    batch_size (per worker) × workers."""
    planned = trials["batch_size"] * trials["workers"]
    recorded = trials["global_batch_size"] if "global_batch_size" in trials else planned
    return recorded.fillna(planned).astype(int)


def _held(trials: pd.DataFrame, manifest: dict) -> tuple[float, str, str]:
    """What each worker of a trial held (GPUs when trials had GPUs, else CPUs), the unit of its hours, and
    how it is known."""
    resources = manifest.get("resources")
    if resources:  # a sweep: what Ray reserved for each worker of a trial
        gpus, cpus, held = resources.get("gpu", 0), resources.get("cpu", 1), "reserved for each worker"
    else:  # one trial: the device it ran on and its torch threads
        gpus = int(trials["device"].astype(str).str.startswith("cuda").any())
        cpus, held = trials["threads"].max() if trials["threads"].notna().any() else 1, "it used"
    return (gpus, "GPU-hours", f"the {gpus:g} GPU {held}") if gpus else (cpus, "CPU-hours", f"the {cpus:g} CPU {held}")


def _compute_hours(trials: pd.DataFrame, manifest: dict) -> tuple[pd.Series, str, str]:
    """Pretraining time × what a trial held: GPU-hours when trials had GPUs, else CPU-hours."""
    amount, unit, held = _held(trials, manifest)
    return trials["pretrain_time_s"] * amount * trials["workers"] / 3600, unit, f"pretraining time × {held} × workers"
