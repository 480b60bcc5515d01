"""Regression hunting over past revisions: run a sweep at each revision of a range (``backfill``) or at the
revisions a binary search picks (``bisect``), each in a git worktree of its own with that revision's code, and
append every finished sweep to the history (``history.append``)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from byol_bench.errors import UserError
from byol_bench.regression.history import HIGHER_IS_BETTER, HISTORY_DIR, append, sweep_entry


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip().splitlines()[-1]}")
    return done.stdout.strip()


def _revisions(repo: Path, revisions: str, paths) -> list[str]:
    """The revisions of range ``revisions`` (first parent, oldest first) that change ``paths``."""
    listed = _git(repo, "rev-list", "--reverse", "--first-parent", revisions, "--", *paths).split()
    if not listed:
        raise UserError(f"no revision in {revisions} changes {', '.join(paths)}; give a range such as HEAD~5..HEAD")
    return listed


def _sweep_at(repo: Path, revision: str, sweep_file: Path, history_dir: Path, log, step: str) -> pd.DataFrame | None:
    """Run ``sweep_file`` at ``revision`` in a git worktree of its own and append the finished sweep; its history
    rows, or None when the sweep did not finish there (an older revision may lack a knob the file sets)."""
    from byol_bench.plan.sweep_file import load_sweep

    log(f"{step}: {revision[:12]} {_git(repo, 'log', '-1', '--format=%s', revision)[:70]}")
    with tempfile.TemporaryDirectory(prefix="byol-bench-backfill-") as scratch:
        tree, results = Path(scratch) / "tree", Path(scratch) / "results"
        _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), revision)
        try:
            command = [sys.executable, "-m", "byol_bench.cli", "sweep", str(Path(sweep_file).resolve()),
                       "--results-dir", str(results)]
            done = subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                                  capture_output=True, text=True)
            if done.returncode != 0:
                last_line = (done.stderr.strip() or "no message").splitlines()[-1][:160]
                log(f"  the sweep failed there (exit {done.returncode}): {last_line}")
                return None
            entry = sweep_entry(results / load_sweep(sweep_file).name)
            append(entry, history_dir)
            return entry
        finally:
            _git(repo, "worktree", "remove", "--force", str(tree))


def _repo() -> Path:
    return Path(_git(Path.cwd(), "rev-parse", "--show-toplevel"))


def _checked_here(sweep_file: Path) -> None:
    """The sweep file must load at the current revision before any worktree is made: a missing or invalid file
    would otherwise fail at every revision of the range, each after a checkout."""
    from byol_bench.plan.sweep_file import expand, load_sweep

    expand(load_sweep(sweep_file))


def backfill(revisions: str, sweep_file: Path, history_dir: Path = HISTORY_DIR, paths=("byol_bench",),
             log=print) -> tuple[list[str], list[str]]:
    """Run ``sweep_file`` at each revision of the range ``revisions`` (``A..B``) that changes ``paths`` and append
    each finished sweep. Returns the revisions of the range and those whose sweep did not finish."""
    _checked_here(sweep_file)
    repo = _repo()
    listed = _revisions(repo, revisions, paths)
    failed = []
    for number, revision in enumerate(listed, 1):
        if _sweep_at(repo, revision, sweep_file, history_dir, log, f"backfill {number}/{len(listed)}") is None:
            failed.append(revision)
    return listed, failed


def first_regressed(revisions: list[str], worse_percent: Callable[[str], float | None],
                    tolerance_percent: float) -> str | None:
    """The first of ``revisions`` (oldest first) whose metric is worse than the baseline's by more than the
    tolerance, found by a binary search that assumes the metric steps once; ``worse_percent(revision)`` measures
    it (None: not measurable there, left out as git bisect skip does). None when the last one is not worse."""
    candidates = list(revisions)
    while candidates and (last := worse_percent(candidates[-1])) is None:
        candidates.pop()
    if not candidates or last <= tolerance_percent:
        return None
    good, bad = -1, len(candidates) - 1  # candidates[bad] is worse; everything up to candidates[good] is not
    while bad - good > 1:
        middle = (good + bad) // 2
        worse = worse_percent(candidates[middle])
        if worse is None:
            del candidates[middle]
            bad -= 1
        elif worse > tolerance_percent:
            bad = middle
        else:
            good = middle
    return candidates[bad]


def _value(entry: pd.DataFrame | None, metric: str, setting: str) -> float | None:
    """``metric`` of the one setting of ``entry`` that contains ``setting``."""
    if entry is None:
        return None
    rows = entry[(entry["metric"] == metric) & entry["setting"].str.contains(setting, regex=False)]
    if rows["setting"].nunique() != 1:
        raise UserError(f"--setting '{setting}' matches {rows['setting'].nunique()} settings with {metric}; give one "
                        f"of: {'; '.join(entry[entry['metric'] == metric]['setting'].unique())}")
    return float(rows["value"].iloc[0])


def bisect(revisions: str, sweep_file: Path, metric: str, setting: str, tolerance_percent: float,
           history_dir: Path = HISTORY_DIR, paths=("byol_bench",), log=print) -> tuple[str | None, float]:
    """The first revision of ``A..B`` where ``metric`` of ``setting`` got worse than at ``A`` by more than the
    tolerance: ``sweep_file`` runs at ``A``, at ``B`` and at the revisions a binary search picks (each appended to
    the history, as backfill does). Returns that revision (None: ``B`` is not worse) and the value at ``A``."""
    _checked_here(sweep_file)
    repo = _repo()
    listed = _revisions(repo, revisions, paths)
    base = revisions.split("..")[0]
    baseline = _value(_sweep_at(repo, _git(repo, "rev-parse", base), sweep_file, history_dir, log, "bisect baseline"),
                      metric, setting)
    if baseline is None:
        raise UserError(f"the sweep did not finish at {base}, so there is no baseline; start the range at a "
                        "revision where it runs")
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1

    def worse_percent(revision: str) -> float | None:
        value = _value(_sweep_at(repo, revision, sweep_file, history_dir, log, "bisect"), metric, setting)
        worse = None if value is None else sign * 100 * (baseline - value) / abs(baseline)
        log(f"  {metric}: " + ("not measured" if worse is None else f"{value:.4g}, {worse:+.1f}% worse than at {base}"))
        return worse

    return first_regressed(listed, worse_percent, tolerance_percent), baseline
