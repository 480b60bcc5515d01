"""Regression tracking: a candidate sweep against a stored baseline, group by group, aware of seed noise.

Trials are matched by the axes of either sweep except ``seed`` (method, batch size, momentum schedule, ...):
each group's seeds are the samples. Accuracy with at least two seeds on both sides uses Welch's
t-test and a minimum effect size (``acc_tol`` points): a difference counts only when it is both
significant and large enough. With one seed, the tolerance alone decides. Throughput and memory are
ratios of the group means against a tolerance in percent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from byol_bench.errors import UserError
from byol_bench.protocol import PROTOCOL, setting_label
from byol_bench.regression.stats import (MIN_EFFECT_POINTS, NO_INTERVAL, bootstrap_interval, difference_of_means,
                                         ratio_of_means, with_interval)
from byol_bench.results.tables import setting_axes, settings, write_json

BASELINES_DIR = Path("results") / "baselines"
ACCURACY_METRICS = ("knn_top1", "linear_top1")
VERDICT_METRICS = ("status", *ACCURACY_METRICS, "images_per_s", "peak_memory_bytes")
# What the trials ran with on their machine (``auto`` resolved): like the protocol's knobs (the trials' own values,
# whichever the sweeps fixed or varied), numbers from two of these are not comparable. The knobs a sweep fixes are
# reported too, as the sweep file states them: a changed learning rate explains a changed accuracy.
RAN_WITH = ("precision", "device_name")
BROKEN = ("failed", "diverged", "collapsed")  # outcomes a change can cause; "incomplete" is an interruption


@dataclass(frozen=True)
class Tolerances:
    acc_points: float = MIN_EFFECT_POINTS  # smallest accuracy change, in percentage points, that counts
    speed_percent: float = 10.0  # images/s may drop this much before it is a regression
    memory_percent: float = 10.0  # peak memory may grow this much
    alpha: float = 0.05  # significance level of Welch's t-test


@dataclass
class AccuracyVerdict:
    """Mean accuracy (0-1) of a group's seeds on each side, the difference in points with its 95% bootstrap
    interval, the test that decided (``welch`` or, with one seed a side, ``tolerance``) and its p-value."""
    baseline: float
    candidate: float
    delta_points: float
    delta_interval: tuple[float, float] | None
    test: str
    p_value: float | None
    verdict: str  # regressed, improved or unchanged


@dataclass
class RatioVerdict:
    """Mean speed or memory on each side, candidate / baseline with its 95% bootstrap interval."""
    baseline: float
    candidate: float
    ratio: float
    ratio_interval: tuple[float, float] | None
    verdict: str


@dataclass
class StatusVerdict:
    """How many of a group's trials ended in each status on each side."""
    baseline: dict[str, int]
    candidate: dict[str, int]
    verdict: str


@dataclass
class GroupVerdict:
    """One setting present in both runs (its axes' values): its verdicts. A metric's verdict is None when no seed
    finished on one side."""
    group: dict
    status: StatusVerdict
    seeds: dict[str, int]  # seeds that finished, by side
    knn_top1: AccuracyVerdict | None = None
    linear_top1: AccuracyVerdict | None = None
    images_per_s: RatioVerdict | None = None
    peak_memory_bytes: RatioVerdict | None = None

    def verdicts(self) -> dict[str, str]:
        """Metric (and ``status``) -> its verdict, for the metrics this group has one for."""
        return {name: found.verdict for name in VERDICT_METRICS if (found := getattr(self, name)) is not None}


@dataclass
class Comparison:
    """``compare_runs``'s result, written as ``regression-vs-<baseline>.json`` and read back by the report."""
    baseline: str
    baseline_saved_as: str | None  # the name it was saved under (``baseline save``), where it was saved
    candidate: str
    tolerances: Tolerances
    groups: list[GroupVerdict]
    unmatched: dict[str, list[dict]]  # baseline_only, candidate_only: the groups of one side alone
    not_ok: list[dict]  # the trials of either run that did not end ok
    protocol_changes: dict[str, list]  # knob -> [baseline's, candidate's]: protocol knobs, machine, fixed knobs
    regressed: bool

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, whole: dict) -> Comparison:
        def group(g: dict) -> GroupVerdict:
            kinds = {"status": StatusVerdict, "knn_top1": AccuracyVerdict, "linear_top1": AccuracyVerdict,
                     "images_per_s": RatioVerdict, "peak_memory_bytes": RatioVerdict}
            return GroupVerdict(**{key: kinds[key](**value) if key in kinds and value is not None else value
                                   for key, value in g.items()})

        known = {f.name for f in fields(cls)}
        return cls(**{**{key: value for key, value in whole.items() if key in known},
                      "baseline_saved_as": whole.get("baseline_saved_as"),  # absent from older verdicts
                      "tolerances": Tolerances(**whole["tolerances"]), "groups": [group(g) for g in whole["groups"]]})


@dataclass
class Run:
    """A sweep's trial table and manifest, from a sweep folder or a saved baseline."""

    name: str
    trials: pd.DataFrame
    manifest: dict


def load_run(source: str | Path, baselines_dir: Path = BASELINES_DIR) -> Run:
    """Read ``results/<sweep>/``, a baseline folder, or a baseline saved under ``baselines_dir``."""
    folder = Path(source)
    if not folder.exists() and (baselines_dir / str(source)).exists():
        folder = baselines_dir / str(source)
    if not folder.is_dir():
        raise UserError(f"{source} is neither a results folder nor a saved baseline; give results/<sweep> or a name "
                        f"from {baselines_dir}")
    table = folder / "trials.parquet" if (folder / "trials.parquet").exists() else folder / "trials.csv"
    try:
        trials = pd.read_parquet(table) if table.suffix == ".parquet" else pd.read_csv(table)
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError as error:
        raise UserError(f"{folder} lacks {Path(error.filename).name}; it is not a finished sweep or baseline "
                        "(rerun the sweep, or save the baseline again)") from None
    except (ValueError, OSError, json.JSONDecodeError) as error:
        raise UserError(f"{folder} is corrupt ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
                        "save the baseline again from its sweep") from None
    missing = {"trial_id", "status", *ACCURACY_METRICS, "images_per_s"} - set(trials.columns)
    if missing or "axes" not in manifest:
        raise UserError(f"{folder} is corrupt (missing {', '.join(sorted(missing)) or 'axes in manifest.json'}); "
                        "save the baseline again from its sweep")
    return Run(manifest.get("sweep", folder.name), trials, manifest)


def save_baseline(sweep_folder: str | Path, name: str, baselines_dir: Path = BASELINES_DIR) -> Path:
    """Keep a compact, committable copy of a sweep: its trial table (CSV) and manifest."""
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"baseline name {name!r} must be letters, digits, '-', '_' or '.'")
    run = load_run(sweep_folder, baselines_dir)
    target = baselines_dir / name
    if target.exists():
        raise UserError(f"baseline {target} exists already; choose another --as name or delete it first")
    baselines_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=baselines_dir, prefix=f".{name}."))
    try:  # written in full beside the target, then renamed: never half a baseline
        run.trials.to_csv(staging / "trials.csv", index=False)
        write_json(staging / "manifest.json", {**run.manifest, "baseline": name, "saved_from": str(sweep_folder)})
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _accuracy_verdict(base: np.ndarray, cand: np.ndarray, tol: Tolerances) -> AccuracyVerdict:
    delta = 100 * (cand.mean() - base.mean())
    if len(base) >= 2 and len(cand) >= 2:
        test = "welch"
        if base.std() == 0 and cand.std() == 0:  # identical seeds on each side: any difference is real
            p_value = 0.0 if delta != 0 else 1.0
        else:
            p_value = float(stats.ttest_ind(cand, base, equal_var=False).pvalue)
        significant = p_value < tol.alpha
    else:
        test, p_value, significant = "tolerance", None, True
    verdict = "unchanged"
    if significant and delta <= -tol.acc_points:
        verdict = "regressed"
    elif significant and delta >= tol.acc_points:
        verdict = "improved"
    interval = bootstrap_interval([100 * base, 100 * cand], difference_of_means)
    return AccuracyVerdict(float(base.mean()), float(cand.mean()), float(delta), interval, test, p_value, verdict)


def _ratio_verdict(base: np.ndarray, cand: np.ndarray, tolerance_percent: float, higher_is_better: bool) -> RatioVerdict:
    ratio = float(cand.mean() / base.mean())
    worse = ratio < 1 - tolerance_percent / 100 if higher_is_better else ratio > 1 + tolerance_percent / 100
    better = ratio > 1 + tolerance_percent / 100 if higher_is_better else ratio < 1 - tolerance_percent / 100
    return RatioVerdict(float(base.mean()), float(cand.mean()), ratio, bootstrap_interval([base, cand], ratio_of_means),
                        "regressed" if worse else "improved" if better else "unchanged")


def _status_verdict(base: pd.Series, cand: pd.Series) -> StatusVerdict:
    """A group that ran cleanly in the baseline and now fails, diverges or collapses has regressed."""
    broken = lambda statuses: int(statuses.isin(BROKEN).sum())  # noqa: E731
    verdict = "unchanged"
    if broken(cand) and not broken(base):
        verdict = "regressed"
    elif broken(base) and not broken(cand):
        verdict = "improved"
    return StatusVerdict(base.value_counts().to_dict(), cand.value_counts().to_dict(), verdict)


def compare_runs(baseline: Run, candidate: Run, tol: Tolerances = Tolerances()) -> Comparison:
    """Verdicts for every group of trials present in both runs, and what could not be matched."""
    axes = list(dict.fromkeys(setting_axes([*baseline.manifest["axes"], *candidate.manifest["axes"]])))
    not_ok = [{"run": run.name, "trial_id": row.trial_id, "status": row.status}
              for run in (baseline, candidate) for row in run.trials.itertuples() if row.status != "ok"]
    base_groups, cand_groups = settings(baseline.trials, axes), settings(candidate.trials, axes)
    groups = []
    for key in sorted(set(base_groups) & set(cand_groups), key=str):
        base, cand = base_groups[key], cand_groups[key]
        status = _status_verdict(base["status"], cand["status"])
        base, cand = base[base.status == "ok"], cand[cand.status == "ok"]
        entry = GroupVerdict(dict(zip(axes, (k.item() if hasattr(k, "item") else k for k in key))), status,
                             {"baseline": len(base), "candidate": len(cand)})
        groups.append(entry)
        if base.empty or cand.empty:  # nothing finished on one side: the status verdict speaks for the group
            continue
        column = lambda trials, metric: trials[metric].to_numpy(float)  # noqa: E731
        entry.knn_top1, entry.linear_top1 = (_accuracy_verdict(column(base, metric), column(cand, metric), tol)
                                             for metric in ACCURACY_METRICS)
        entry.images_per_s = _ratio_verdict(column(base, "images_per_s"), column(cand, "images_per_s"),
                                            tol.speed_percent, higher_is_better=True)
        entry.peak_memory_bytes = _ratio_verdict(column(base, "peak_memory_bytes"), column(cand, "peak_memory_bytes"),
                                                 tol.memory_percent, higher_is_better=False)
    describe = lambda keys: [dict(zip(axes, k)) for k in sorted(keys, key=str)]  # noqa: E731
    fixed_a, fixed_b = baseline.manifest.get("fixed", {}), candidate.manifest.get("fixed", {})
    return Comparison(
        baseline=baseline.name, baseline_saved_as=baseline.manifest.get("baseline"), candidate=candidate.name,
        tolerances=tol, groups=groups,
        unmatched={"baseline_only": describe(set(base_groups) - set(cand_groups)),
                   "candidate_only": describe(set(cand_groups) - set(base_groups))},
        not_ok=not_ok,
        protocol_changes={**{k: [a, b] for k in (*PROTOCOL, *RAN_WITH)
                             if (a := _ran_with(baseline, k)) != (b := _ran_with(candidate, k))},
                          **{k: [fixed_a.get(k), fixed_b.get(k)] for k in sorted(set(fixed_a) | set(fixed_b))
                             if fixed_a.get(k) != fixed_b.get(k)}},
        regressed=any(verdict == "regressed" for g in groups for verdict in g.verdicts().values()))


def _ran_with(run: Run, column: str) -> str | None:
    """The distinct values of a resolved column over a run's trials (None where the table predates it)."""
    values = sorted(set(run.trials[column].dropna().astype(str))) if column in run.trials else []
    return ", ".join(values) or None


def _nan_safe(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _with_interval(value: float, interval: tuple | None, decimals: int, sign: str = "") -> str:
    """A verdict's difference or ratio with its 95% bootstrap interval, or why it has none."""
    text = with_interval(value, interval, decimals, sign)
    return text if interval is not None else f"{text} ({NO_INTERVAL})"


def verdict_table(comparison: Comparison) -> pd.DataFrame:
    """One row per matched group: status, the accuracy deltas (points, with their 95% interval and p), the ratios
    (with theirs), and each verdict."""
    rows = []
    for g in comparison.groups:
        row = {"group": setting_label(g.group, ", "),
               "seeds ok": f"{g.seeds['baseline']} → {g.seeds['candidate']}", "status verdict": g.status.verdict}
        for found, label in ((g.knn_top1, "kNN top-1"), (g.linear_top1, "linear top-1")):
            row[f"{label} Δ points [95% CI] (p)"] = "-" if not found else (
                f"{_with_interval(found.delta_points, found.delta_interval, 2, '+')} (p {_nan_safe(found.p_value, '.3f')})")
            row[f"{label} verdict"] = found.verdict if found else "-"
        for found, label in ((g.images_per_s, "images/s"), (g.peak_memory_bytes, "memory")):
            row[f"{label} ratio [95% CI]"] = _with_interval(found.ratio, found.ratio_interval, 3) if found else "-"
            row[f"{label} verdict"] = found.verdict if found else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def notes(comparison: Comparison) -> list[str]:
    """What the verdict table cannot show: unmatched groups, unfinished trials, protocol changes, the verdict."""
    tol = comparison.tolerances
    lines = [f"Accuracy: Welch's t-test (alpha {tol.alpha}) with at least 2 seeds a side, and a change of at least "
             f"{tol.acc_points} points; speed tolerance {tol.speed_percent}%, memory {tol.memory_percent}%. "
             "In brackets: the 95% bootstrap interval of the difference (or ratio) of the means, each side's seeds "
             "resampled on their own."]
    unmatched = comparison.unmatched
    for side, label in (("baseline_only", "only in the baseline"), ("candidate_only", "only in the candidate")):
        if unmatched[side]:
            lines.append(f"Groups {label}: " + "; ".join(setting_label(g, ", ") for g in unmatched[side]))
    if comparison.not_ok:
        lines.append("Trials that did not finish: " + "; ".join(f"{t['run']}: {t['trial_id']} ({t['status']})"
                                                               for t in comparison.not_ok))
    if comparison.protocol_changes:
        lines.append("Protocol changes (fixed knobs, precision or device that differ): " + "; ".join(
            f"{k}: {a} → {b}" for k, (a, b) in comparison.protocol_changes.items()))
    lines.append("Verdict: REGRESSED" if comparison.regressed else "Verdict: no regression")
    return lines
