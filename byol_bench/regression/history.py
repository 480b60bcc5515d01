"""Regression tracking over time: every finished sweep and `make bench` run appended to one history, read back
as series (one per source, protocol, machine type, setting and metric), and the change points in each series.

The store is a folder of Parquet files, ``<history>/runs/<run_id>.parquet``, one per run: appending writes one
new file atomically, the same run appended twice has the same id and is kept once, two machines' histories
merge by copying files (no file is ever rewritten), and pandas reads the folder as one tidy table.

Change points are found with E-Divisive means (Matteson & James 2014, the method of MongoDB's
signal-processing-algorithms and of Apache Otava): the split that most separates a series' values, kept when a
permutation test finds it significant, then the same within each side. Filling a history from past revisions
(backfill, bisect) is ``byol_bench.regression.backfill``'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from byol_bench.errors import UserError
from byol_bench.protocol import setting_label
from byol_bench.regression.compare import load_run
from byol_bench.results.tables import NOT_READ, setting_axes, settings, write_atomic
from byol_bench.trial.provenance import Commit, device_name, git_commit, versions

HISTORY_DIR = Path("results") / "history"
SWEEP_METRICS = ("knn_top1", "linear_top1", "images_per_s", "step_time_median_s", "peak_memory_bytes", "mfu")
REPORTED_METRICS = ("knn_top1", "linear_top1", "images_per_s")  # a sweep report's history section draws these
HIGHER_IS_BETTER = {"knn_top1": True, "linear_top1": True, "images_per_s": True, "step_time_median_s": False,
                    "peak_memory_bytes": False, "mfu": True, "median_s": False}
# Runs of one series are comparable: same sweep (or benchmark set), protocol, machine type, setting and metric.
SERIES = ["source", "protocol", "machine", "setting", "metric"]
ISA_FLAGS = ("avx2", "avx512f", "amx_bf16")  # what sets a CPU's matrix-product speed apart


@dataclass(frozen=True)
class Detector:
    alpha: float = 0.01  # a split counts when at most this share of shuffled series separate as well
    permutations: int = 199
    min_size: int = 2  # runs on each side of a change point: one noisy run alone is never a change
    seed: int = 0  # the permutations are drawn from it: the same history always gives the same change points


def machine_type(cpu: str, flags, gpu: str | None, cores: int) -> str:
    """A series' machine: what sets its speed (CPU model and ISA, GPU, cores), not which host it was."""
    isa = "+".join(flag for flag in ISA_FLAGS if flag in flags) or "no AVX2"
    return f"{cpu} ({isa}), {gpu or 'no GPU'}, {cores} cores"


def _cpu_model() -> str:
    return device_name(torch.device("cpu"))


def this_machine(gpu: str | None = None) -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return machine_type(_cpu_model(), flags, gpu, os.cpu_count() or 1)


def _run_id(*identity) -> str:
    return hashlib.sha1(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _entry(rows: list[dict], source: str, protocol: str, machine: str, commit: Commit, versions: dict,
           run_time: str) -> pd.DataFrame:
    """One run's rows (setting, metric, value, spread) with the run's series and revision facts."""
    run_id = _run_id(source, protocol, machine, commit.revision, run_time)
    facts = {"run_id": run_id, "source": source, "protocol": protocol, "machine": machine,
             "revision": commit.revision, "commit_time": commit.time, "branch": commit.branch, "dirty": commit.dirty,
             "torch": versions.get("torch"), "lightly": versions.get("lightly"), "run_time": run_time}
    return pd.DataFrame([{**facts, **row} for row in rows])


def sweep_entry(folder: Path) -> pd.DataFrame:
    """A finished sweep as rows: per setting (its seeds pooled) each metric's mean and its spread over seeds, at
    the revision its manifest records (looked up in this checkout's repository)."""
    run = load_run(folder)
    if not run.manifest.get("complete"):
        raise UserError(f"{folder} is not a finished sweep (its manifest says incomplete); finish it with --resume")
    recorded = run.manifest.get("git_revision") or ""
    commit = git_commit(recorded.removesuffix("-dirty")) if recorded else None
    if commit is None:
        raise UserError(f"{folder} records no git revision this repository knows ({recorded or 'none'}); append it "
                        "from a clone that has that commit")
    commit = replace(commit, dirty=recorded.endswith("-dirty"))
    ok = run.trials[run.trials["status"] == "ok"]
    if ok.empty:
        raise UserError(f"{folder} has no trial that finished ok: nothing to record")
    machine = _sweep_machine(ok, folder)
    axes = setting_axes(run.manifest["axes"])
    rows = []
    for key, trials in settings(ok, axes).items():
        setting = setting_label({axis: value for axis, value in zip(axes, key) if value != NOT_READ}, ", ")
        for metric in SWEEP_METRICS:
            values = trials[metric].astype(float).dropna() if metric in trials else pd.Series(dtype=float)
            if len(values):
                rows.append({"setting": setting, "metric": metric, "value": values.mean(),
                             "spread": values.std() if len(values) > 1 else np.nan})
    return _entry(rows, f"sweep {run.name}", sweep_protocol(run.name, run.manifest), machine, commit,
                  run.manifest.get("versions", {}), run.manifest.get("started"))


def sweep_protocol(name: str, manifest: dict) -> str:
    """A sweep's series key: its name and a hash of every knob its axes do not vary. Stricter than the protocol
    (``protocol.PROTOCOL``, which the fixed knobs include): a history follows one sweep over revisions, so a changed
    learning rate in the sweep file starts new series too, rather than showing as a change of the code."""
    knobs = {key: manifest.get(key) for key in ("fixed", "method_overrides", "resources")}
    if manifest.get("backbone_overrides"):  # only where a sweep has them: older series keep their keys
        knobs["backbone_overrides"] = manifest["backbone_overrides"]
    if manifest.get("plugins"):  # a plug-in's new version starts new series, as a changed knob does
        knobs["plugins"] = manifest["plugins"]
    return f"{name} {_run_id(knobs)[:8]}"


def _sweep_machine(trials: pd.DataFrame, folder: Path) -> str:
    """This machine's type, with the GPU the trials ran on; an error when they ran on another CPU model."""
    on_gpu = trials.get("device", pd.Series("cpu", index=trials.index)).astype(str).str.startswith("cuda")
    gpu = trials.loc[on_gpu, "device_name"].iloc[0] if on_gpu.any() else None
    cpus = set(trials.loc[~on_gpu, "device_name"].dropna())
    if cpus - {_cpu_model()}:
        raise UserError(f"{folder} ran on {', '.join(sorted(cpus))}, not on this machine's {_cpu_model()}; append "
                        "it on a machine of its type")
    return this_machine(gpu)


def history_beside(sweep_folder: Path) -> Path:
    """The history a sweep in ``results/<sweep>`` appends itself to: ``results/history``."""
    return sweep_folder.parent / HISTORY_DIR.name


def record_sweep(folder: Path) -> str:
    """Append a sweep that just finished to the history beside it; a line saying where, or why not."""
    history_dir = history_beside(folder)
    try:
        added = append(sweep_entry(folder), history_dir)
    except UserError as error:  # outside git, say: the sweep itself is done and fine
        return f"history: not appended ({error})"
    return f"history: {'appended to' if added else 'already in'} {history_dir}"


def bench_entry(path: Path) -> pd.DataFrame:
    """A pytest-benchmark JSON (``make bench``) as rows: each benchmark's median seconds and IQR, on the machine
    and at the commit the JSON records."""
    try:
        saved = json.loads(Path(path).read_text())
        cpu, commit = saved["machine_info"]["cpu"], saved["commit_info"]
        rows = [{"setting": bench["name"], "metric": "median_s", "value": bench["stats"]["median"],
                 "spread": bench["stats"]["iqr"]} for bench in saved["benchmarks"]]
        machine = machine_type(cpu["brand_raw"], cpu.get("flags", []), None, cpu["count"])
        revision = Commit(commit["id"], commit["time"], commit.get("branch"), bool(commit.get("dirty")))
        run_time = saved["datetime"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path} is not a pytest-benchmark JSON ({type(error).__name__}: {error}); give a file that "
                        "'make bench' saved under results/benchmarks/") from None
    return _entry(rows, "bench", "make bench", machine, revision, versions(), run_time)


def append(entry: pd.DataFrame, history_dir: Path = HISTORY_DIR) -> bool:
    """Add one run's rows to the history; False when that run is there already (nothing is written)."""
    path = history_dir / "runs" / f"{entry['run_id'].iloc[0]}.parquet"
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, entry.to_parquet(index=False))
    return True


def load_history(history_dir: Path = HISTORY_DIR) -> pd.DataFrame:
    """Every run's rows, oldest commit first (a commit's runs in the order they ran)."""
    files = sorted((history_dir / "runs").glob("*.parquet"))
    if not files:
        raise UserError(f"{history_dir} holds no runs yet; a finished sweep appends itself, or run "
                        "'byol-bench history add results/<sweep>' (or a results/benchmarks/ JSON)")
    try:
        history = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    except (OSError, ValueError) as error:
        raise UserError(f"a run file in {history_dir / 'runs'} cannot be read ({error}); delete it and append "
                        "that run again") from None
    return history.sort_values(["commit_time", "run_time"], kind="stable").reset_index(drop=True)


# --- change points -------------------------------------------------------------------------------


def _split_scores(values: np.ndarray, min_size: int) -> np.ndarray:
    """For each row of ``values`` (a series, or shuffles of it), the energy distance between ``row[:tau]`` and
    ``row[tau:]`` scaled by the sides' sizes (Matteson & James's q-hat), for tau = min_size .. n - min_size."""
    n = values.shape[-1]
    summed = np.zeros((*values.shape[:-1], n + 1, n + 1))  # [..., i, j]: the sum of |x_a - x_b| over a < i, b < j
    summed[..., 1:, 1:] = np.abs(values[..., :, None] - values[..., None, :]).cumsum(-2).cumsum(-1)
    tau = np.arange(min_size, n - min_size + 1)
    rest = n - tau
    corner, edge, total = summed[..., tau, tau], summed[..., tau, n], summed[..., n:, n]
    between, within_left, within_right = edge - corner, corner / 2, (total - 2 * edge + corner) / 2
    return tau * rest / n * (2 * between / (tau * rest) - within_left / (tau * (tau - 1) / 2)
                             - within_right / (rest * (rest - 1) / 2))


def change_points(values, detector: Detector = Detector()) -> list[int]:
    """The indices where a new level starts (E-Divisive means with a permutation test), in order."""
    values, rng, found = np.asarray(values, dtype=float), np.random.default_rng(detector.seed), []

    def split(start: int, stop: int) -> None:
        segment = values[start:stop]
        if len(segment) < 2 * detector.min_size or np.ptp(segment) == 0:
            return
        scores = _split_scores(segment, detector.min_size)
        shuffled = rng.permuted(np.tile(segment, (detector.permutations, 1)), axis=1)
        chunks = np.array_split(shuffled, max(1, len(segment) ** 2 // 20_000))  # ~4 million cells each, at any length
        as_separate = sum(int((_split_scores(chunk, detector.min_size).max(-1) >= scores.max()).sum())
                          for chunk in chunks)
        if (as_separate + 1) / (detector.permutations + 1) > detector.alpha:
            return
        at = start + detector.min_size + int(np.argmax(scores))
        found.append(at)
        split(start, at)
        split(at, stop)

    split(0, len(values))
    return sorted(found)


def noise(values: np.ndarray) -> float:
    """A series' run-to-run spread, robust to its steps: the median absolute successive difference, as a standard
    deviation of one run."""
    return float(1.4826 * np.median(np.abs(np.diff(values))) / np.sqrt(2)) if len(values) > 1 else np.nan


def series_points(history: pd.DataFrame, detector: Detector = Detector()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each series' runs with the level they belong to (the mean of their segment between change points) and the
    series' noise; and one row per change point: where (the last revision before, the first after), its size in
    percent of the level before, and whether it is a regression."""
    points, changes = [], []
    for key, runs in history.dropna(subset=["value"]).groupby(SERIES, sort=False):
        runs = runs.reset_index(drop=True)
        values = runs["value"].to_numpy(float)
        starts = change_points(values, detector)
        bounds = [0, *starts, len(values)]
        levels = np.concatenate([np.full(b - a, values[a:b].mean()) for a, b in zip(bounds, bounds[1:])])
        points.append(runs.assign(level=levels, noise=noise(values)))
        better = HIGHER_IS_BETTER.get(runs["metric"].iloc[0], True)
        for start in starts:
            before, after = levels[start - 1], levels[start]
            percent = 100 * (after - before) / abs(before) if before else np.nan
            changes.append({**dict(zip(SERIES, key)), "after_revision": runs["revision"].iloc[start],
                            "before_revision": runs["revision"].iloc[start - 1], "change_percent": percent,
                            "direction": "improvement" if (after > before) == better else "regression",
                            "commit_time": runs["commit_time"].iloc[start]})
    return pd.concat(points, ignore_index=True), pd.DataFrame(changes, columns=[*SERIES, "after_revision",
                                                                                "before_revision", "change_percent",
                                                                                "direction", "commit_time"])


def regressions(changes: pd.DataFrame, tolerance_percent: float) -> pd.DataFrame:
    """The series whose latest change point is a regression larger than the tolerance."""
    latest = changes.sort_values("commit_time", kind="stable").groupby(SERIES, sort=False).tail(1)
    return latest[(latest["direction"] == "regression") & (latest["change_percent"].abs() > tolerance_percent)]


def select(history: pd.DataFrame, metric: str | None, series_filter: str | None) -> pd.DataFrame:
    """The runs of one metric (all metrics when None) whose source or setting contains ``series_filter``."""
    if metric is not None and metric not in set(history["metric"]):
        raise UserError(f"no series of metric '{metric}' in the history; choose one of: "
                        f"{', '.join(sorted(set(history['metric'])))}")
    chosen = history if metric is None else history[history["metric"] == metric]
    if series_filter:
        label = chosen["source"] + " " + chosen["setting"]
        chosen = chosen[label.str.contains(series_filter, case=False, regex=False)]
        if chosen.empty:
            raise UserError(f"no series matches --series '{series_filter}'; give part of a sweep name or setting, "
                            "e.g. 'quick' or 'method=byol'")
    return chosen


# --- tables and report ---------------------------------------------------------------------------


def _change_text(change) -> str:
    return f"{change.change_percent:+.1f}% {change.direction} at {change.after_revision[:8]}"


def summary_table(points: pd.DataFrame, changes: pd.DataFrame) -> pd.DataFrame:
    """One row per series: its runs and revisions, the latest level and noise, and its change points."""
    rows = []
    for key, runs in points.groupby(SERIES, sort=False):
        found = changes[(changes[SERIES] == pd.Series(key, index=SERIES)).all(axis=1)]
        level = runs["level"].iloc[-1]
        rows.append({**dict(zip(SERIES, key)), "runs": len(runs), "revisions": runs["revision"].nunique(),
                     "latest level": f"{level:.4g}", "noise (%)": f"{100 * runs['noise'].iloc[0] / abs(level):.1f}",
                     "change points": "; ".join(_change_text(change) for change in found.itertuples()) or "none"})
    return pd.DataFrame(rows)
