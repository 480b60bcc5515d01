"""Regression tracking in documents: compare's verdicts (a table and its notes, in Markdown or in a sweep's report)
and the history's series (a table and a figure per metric, in the history's own report or a sweep's)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from byol_bench.errors import UserError
from byol_bench.regression.compare import Comparison, notes, verdict_table
from byol_bench.regression.history import (REPORTED_METRICS, SERIES, history_beside, load_history, series_points,
                                           summary_table, sweep_protocol)
from byol_bench.report import figures, render


def report_blocks(comparison: Comparison) -> list:
    """The verdict table and the notes, as blocks of a report section."""
    table = verdict_table(comparison)
    saved_as = comparison.baseline_saved_as
    title = f"Against baseline {saved_as} (sweep {comparison.baseline})" if saved_as else \
        f"Against baseline {comparison.baseline}"
    verdicts = render.Table(title, table) if len(table) else \
        "No group of trials is in both runs."
    return [verdicts, *notes(comparison)]


def to_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown document: the verdict table, then the notes."""
    title = f"Regression check: {comparison.candidate} against {comparison.baseline}"
    return render.to_markdown(title, [("Verdicts per group", report_blocks(comparison))])


def series_blocks(folder: Path, points: pd.DataFrame, changes: pd.DataFrame) -> list:
    """The series table and a figure per metric (saved into ``folder`` as ``history-<metric>``), for a report."""
    table = summary_table(points, changes)
    shared = [column for column in ("source", "protocol", "machine") if table[column].nunique() == 1]
    caption = "".join(f"{column.capitalize()} of every series: {table[column].iloc[0]}. " for column in shared)
    table = render.Table("Series", table.drop(columns=shared), caption + "Change points: E-Divisive means, "
                         "permutation test; size in % of the level before.")
    drawn = [figures.save(folder, f"history-{metric}", f"{metric} over revisions",
                          f"{metric} per run against the revision (oldest commit left), a line per setting; the steps "
                          "are the levels between change points (dashed lines, labelled with the change), the shade "
                          "the level ± 2 × the series' run-to-run noise; a panel per source, protocol and machine "
                          "type",
                          figures.history_series(points[points["metric"] == metric], changes))
             for metric in points["metric"].unique()]
    return [table, *drawn]


def write_history_report(history_dir: Path, points: pd.DataFrame, changes: pd.DataFrame) -> Path:
    """``history.html`` and ``history.md`` in ``history_dir``: the series table and a figure per metric."""
    blocks = series_blocks(render.writable(history_dir / "figures"), points.sort_values("metric", kind="stable"),
                           changes)
    return render.write_documents(history_dir, "history", "byol-bench history", [("Series", blocks)])


def sweep_history_blocks(sweep_folder: Path, manifest: dict, figures_dir: Path) -> list:
    """A sweep report's history section: the series of its sweep and protocol in the history beside it
    (``results/history`` for ``results/<sweep>``) that hold two runs or more: accuracies and images/s."""
    history_dir = history_beside(sweep_folder)
    try:
        history = load_history(history_dir)
    except UserError:
        history = pd.DataFrame(columns=[*SERIES, "value"])
    runs = history[(history["source"] == f"sweep {sweep_folder.name}")
                   & (history["protocol"] == sweep_protocol(sweep_folder.name, manifest))
                   & history["metric"].isin(REPORTED_METRICS)]
    runs = runs[runs.groupby(SERIES)["value"].transform("size") >= 2]
    if runs.empty:
        return [f"No series of this sweep and protocol in {history_dir} has two runs yet: each setting's accuracy "
                "and speed per revision, with their change points, appear here from the second run on "
                "(`byol-bench history` draws every series there)."]
    points, changes = series_points(runs)
    return series_blocks(figures_dir, points, changes)
