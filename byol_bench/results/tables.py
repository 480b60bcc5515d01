"""Trial results -> tidy tables: one row per trial, one row per trial-epoch, written atomically."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from byol_bench.config import KEYS, OPTION_KNOBS, method_reads, option_columns
from byol_bench.errors import UserError
from byol_bench.trial.result import Floors, Metrics, TrialResult, columns, values

# The trial table's columns from the result's parts (every trial has them, whatever it measured).
METRICS, FLOORS = columns(Metrics), columns(Floors)
NOT_READ = "-"  # an axis's value in a trial whose method does not read that knob (SimCLR's momentum schedule)
EMPTY_MEANS = {"subset": "all", "test_subset": "all"}  # what an empty (null) knob means, where it is not "null"


def setting_axes(axes) -> list[str]:
    """The sweep axes that tell settings apart: every one but seed, whose trials are one setting's samples."""
    return [axis for axis in axes if axis != "seed"]


def axis_values(trials: pd.DataFrame, axis: str) -> pd.Series:
    """An axis column as keys to group, match and show trials by: NOT_READ where the trial's method does not read
    the knob (or the table lacks it), an empty knob as what it means (subset: all; NaN would match nothing), whole
    numbers as integers (a column with gaps holds them as floats, and a CSV baseline reads them back so)."""
    if axis not in trials:
        return pd.Series(NOT_READ, index=trials.index, dtype=object)

    def key(method, value):
        if not method_reads(method, axis):
            return NOT_READ
        if pd.isna(value):
            return EMPTY_MEANS.get(axis, "null")
        return int(value) if isinstance(value, float) and value.is_integer() else value

    return pd.Series([key(method, value) for method, value in zip(trials["method"], trials[axis])],
                     index=trials.index, dtype=object)


def settings(trials: pd.DataFrame, axes: list[str]) -> dict[tuple, pd.DataFrame]:
    """Setting key (its ``axis_values`` over ``axes``) -> its trials that ran to an end; a setting's seeds are its
    samples."""
    ended = trials[trials.status != "incomplete"]
    ended = ended.assign(**{axis: axis_values(ended, axis) for axis in axes})
    if not axes:  # a sweep over seeds alone: one setting
        return {(): ended} if len(ended) else {}
    return {tuple(key): rows for key, rows in ended.groupby(axes)}


def trial_row(trial_id: str, config: dict, status: str, result: TrialResult | None = None, error: str | None = None) -> dict:
    """One trial as a flat row: every config key, the status, metrics, floors, run facts and provenance.

    ``config`` is the trial's resolved config (``config.resolved_config``): a method-specific key the method
    does not read (SimCLR's momentum schedule, say) is empty rather than a default that was never used.
    The run facts follow the config, so ``device`` and ``precision`` hold what the trial ran with, not ``auto``.
    """
    row = {"trial_id": trial_id, "status": status, "error": error}
    row.update({key: config.get(key) for key in KEYS})
    # an options knob as its name=value text, and each option as a column of its own (an axis, a grouping key)
    row.update({key: ",".join(f"{name}={value}" for name, value in config[key].items())
                for key in OPTION_KNOBS if config.get(key)})
    row.update(option_columns(config))
    result = result or TrialResult(status, config)
    # every part's columns, with what a trial's knobs add (low-label and transfer metrics and floors); a run fact
    # the result lacks (a result of an older version) leaves the config's value
    row.update({**values(result.metrics), **values(result.floors)})
    row.update({key: value for key, value in values(result.run).items() if value is not None})
    row.update(values(result.provenance))
    if result.provenance.plugins:  # where a method or backbone came from, when not built in
        row["plugins"] = "; ".join(f"{what}: {origin}" for what, origin in result.provenance.plugins.items())
    return row


def epoch_rows(trial_id: str, result: TrialResult) -> list[dict]:
    return [{"trial_id": trial_id, **row} for row in result.history]


EMBEDDING_COLUMNS = ["trial_id", "map", "algorithm", "x", "y", "label"]


def embedding_rows(trial_id: str, result: TrialResult) -> list[dict]:
    """A trial's embedding maps (``embedding_map``), a row per point: which map (trained, random_init), the
    algorithm, the coordinates and the image's class."""
    return [{"trial_id": trial_id, "map": name, "algorithm": found["algorithm"], "x": x, "y": y, "label": label}
            for name, found in (result.embedding or {}).items() if found
            for (x, y), label in zip(found["points"], found["labels"])]


def check_writable(path: Path, what: str, fix: str, file: bool = False) -> None:
    """Fail before any work when ``path`` cannot be written: a folder to write into or, with ``file``, one
    file (written as ``write_json`` writes it, through a temporary file beside it). The check does what the
    write will do, creating the missing folders and a temporary file, then removes everything it created."""
    folder = path.parent if file else path
    created = []  # the missing folders, deepest first
    try:
        if file and path.is_dir():
            raise UserError(f"{what} {path} is a folder; name a file in it, or {fix}")
        missing = folder
        while not missing.exists():
            created.append(missing)
            missing = missing.parent
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"{what} {path} cannot be written ({error.strerror}: {error.filename}); {fix}") from None
    finally:
        for missing in created:
            with contextlib.suppress(OSError):  # never created, or filled meanwhile by someone else
                missing.rmdir()


class DiskFull(UserError):
    """A write that found no space left: names the file, what it needed and what was free."""

    strerror = os.strerror(errno.ENOSPC)


def megabytes(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


def disk_full(folder: Path, names: str, needed: int) -> DiskFull:
    free = shutil.disk_usage(folder).free
    return DiskFull(f"no space left for {folder}/{names}: {megabytes(needed)} needed, {megabytes(free)} free on "
                    "its disk; free some space there and run again")


def write_atomic(path: Path, content: bytes) -> None:
    """``content`` into a temporary file beside ``path``, then renamed over it: a crash or a full disk never
    leaves half a file; a full disk (or quota) is a ``DiskFull`` and leaves no temporary file."""
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            file.write(content)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(path.parent, path.name, len(content)) from None
        raise


def write_json(path: Path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(payload, indent=2, default=str).encode())


def write_json_or_fallback(path: Path, payload) -> Path:
    """Write ``payload`` to ``path`` or, when that fails (a full disk, a folder removed meanwhile), to a
    new file in the system's temporary folder, saying so in one line on stderr: finished work is never
    lost. Returns the path written."""
    try:
        write_json(path, payload)
        return path
    except (OSError, DiskFull) as error:
        try:
            handle, fallback = tempfile.mkstemp(prefix=f"{path.stem}-", suffix=".json")
            os.close(handle)
            write_json(Path(fallback), payload)
        except (OSError, DiskFull) as second:
            raise UserError(f"cannot write {path} ({error.strerror}), nor a copy in {tempfile.gettempdir()} "
                            f"({second.strerror}): the result is lost; check the disks") from None
        print(f"byol-bench: warning: cannot write {path} ({error.strerror}); wrote {fallback} instead",
              file=sys.stderr)
        return Path(fallback)


def write_tables(folder: Path, trials: list[dict], epochs: list[dict],
                 embeddings: list[dict] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``trials.parquet`` (+ ``.csv``), ``epochs.parquet`` and ``embeddings.parquet`` in ``folder``, each written
    whole; none when the disk lacks room for all of them (``DiskFull``)."""
    folder.mkdir(parents=True, exist_ok=True)
    trial_table = pd.DataFrame(trials).sort_values("trial_id", kind="stable").reset_index(drop=True)
    epoch_columns = ["trial_id", "epoch", "loss", "lr", "momentum", "images_per_s", "epoch_time_s", "knn_top1"]
    epoch_table = pd.DataFrame(epochs, columns=None if epochs else epoch_columns)
    axes = trial_table[["trial_id", "method", "batch_size", "momentum_schedule", "seed"]]
    epoch_table = axes.merge(epoch_table, on="trial_id", how="inner")
    embedding_table = pd.DataFrame(list(embeddings), columns=EMBEDDING_COLUMNS)
    tables = {"trials.parquet": trial_table.to_parquet(index=False), "trials.csv": trial_table.to_csv(index=False).encode(),
              "epochs.parquet": epoch_table.to_parquet(index=False), "embeddings.parquet": embedding_table.to_parquet(index=False)}
    needed = sum(map(len, tables.values()))
    if needed > shutil.disk_usage(folder).free:  # all or none: never a new trials table beside old epochs
        raise disk_full(folder, f"{', '.join(tables)}", needed)
    for name, content in tables.items():
        write_atomic(folder / name, content)
    return trial_table, epoch_table


def write_parquet(path: Path, table: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, table.to_parquet(index=False))


def summary(trial_table: pd.DataFrame, axes) -> str:
    """The final table a sweep prints: its settings (method, batch size, momentum schedule and the sweep's other
    axes), seed, status, accuracy against the floor, speed."""
    keys = ["method", "batch_size", "momentum_schedule"]
    keys += [axis for axis in setting_axes(axes) if axis not in keys] + ["seed"]
    columns = ["status", "knn_top1", "linear_top1", "random_init_knn_top1", "images_per_s", "pretrain_time_s"]
    view = trial_table[keys + columns].sort_values(keys, na_position="first")
    view = view.assign(**{key: axis_values(view, key) for key in keys})
    return view.to_string(index=False, float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.0f}")
