"""Comparison reports: a sweep's tables (or one trial's JSON) as tables and figures, in HTML and Markdown.

``write_report(source)`` reads ``results/<sweep>/`` (trials.parquet, epochs.parquet, manifest.json) or
one ``byol-bench train --out`` JSON and writes ``report.html`` (self-contained: figures embedded as
PNG), ``report.md`` and ``figures/<name>.png|svg`` into the sweep folder, or into ``<stem>-report/``
beside the JSON. ``write_comparison(a, b)`` puts two sources side by side in ``compare-<b>.html|md``
inside a's report folder.

The modules: ``load`` (sources in, nothing written), ``tables``, ``figures``, ``render`` (the documents).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from byol_bench.errors import UserError
from byol_bench.plan.tune_file import CHOSEN_DIGITS, budget_text
from byol_bench.protocol import floors_under
from byol_bench.regression.compare import Comparison
from byol_bench.regression.stats import BOOTSTRAP_RESAMPLES, MIN_EFFECT_POINTS
from byol_bench.report import figures
from byol_bench.report.load import Results, load_results
from byol_bench.report.regression import report_blocks, sweep_history_blocks
from byol_bench.report.render import Figure, Table, write_documents, writable
from byol_bench.results.weights import CARD_STEM
from byol_bench.report.search_tables import chosen_table, search_budget_table, tuned_vs_defaults
from byol_bench.report.tables import (ACCURACY_COLUMNS, COMPARED, COST_COLUMNS, anchor_table, axis_label,
                                      comparison_table, evaluation_columns, evaluation_floor_columns, floor_table,
                                      improvement_frame, improvement_table, per_group, protocol, protocol_differences,
                                      provenance_table, ranking_warnings, seeds_needed_table, settings_title,
                                      status_counts, unfinished_table)
from byol_bench.trial.evaluate import EMBEDDING_POINTS

__all__ = ["write_report", "write_comparison", "settings_summary"]


def write_report(source: Path, heatmap_axes: tuple[str, str] = ("method", "global_batch_size"),
                 acc_points: float = MIN_EFFECT_POINTS) -> Path:
    """Tables and figures for a sweep folder or a trial JSON; returns the path of report.html. ``acc_points`` is
    the accuracy difference the seeds-needed table sizes the seeds for."""
    results = load_results(source)
    for axis in heatmap_axes:
        if axis not in results.trials:
            raise UserError(f"heatmap axis '{axis}' is not a column of the trials table; choose trial columns "
                            "such as method, global_batch_size, batch_size, momentum_schedule, seed")
    above, unfinished = protocol(results), unfinished_table(results)
    figures_dir = writable(results.report_dir / "figures")
    improvements = improvement_frame(results)
    sections = [
        ("Overview", _overview(results)),
        (settings_title("Results", results.other_axes), _result_tables(results, above)),
        ("How sure: probability of improvement and seeds needed", _confidence(results, improvements, acc_points)),
        *([("Search", _search_section(results, figures_dir, above))] if results.search is not None else []),
        ("Trials that did not finish", [Table("Failed, diverged, incomplete and missing trials", unfinished, above)
                                        if len(unfinished) else "Every trial finished."]),
        *([("Weights", [_weights(results)])] if results.trials.get("weights", pd.Series()).notna().any() else []),
        ("Regression checks", _regression_checks(results.report_dir)),
        *([("History", _history(results, figures_dir))] if results.manifest else []),
        ("Figures", _figures(results, improvements, figures_dir, *heatmap_axes)),
        ("Provenance", [Table("Devices, versions and hosts of the trials", provenance_table(results))]),
    ]
    return write_documents(results.report_dir, "report", f"byol-bench report: {results.name}", sections)


def settings_summary(source: Path) -> str:
    """The console's table of a sweep's settings: accuracy and speed, each with its 95% interval and n."""
    return per_group(load_results(source), COMPARED).to_string(index=False)


def _overview(results: Results) -> list[str]:
    manifest = results.manifest
    lines = [f"Source: {results.source}. {status_counts(results)}."]
    if manifest:
        resources = ", ".join(f"{count:g} {kind.upper()}" for kind, count in (manifest.get("resources") or {}).items())
        lines.insert(0, manifest.get("description") or f"Sweep {manifest.get('sweep', results.name)}.")
        lines.append(f"Started {manifest.get('started')}, finished {manifest.get('finished') or 'not recorded'}; "
                     f"complete: {manifest.get('complete')}. Resources per worker: {resources or 'not recorded'}.")
    lines.append("Accuracies are in %; every figure of a setting is the mean over its finished seeds with its 95% "
                 f"bootstrap confidence interval in brackets (percentile bootstrap over the seeds, "
                 f"{BOOTSTRAP_RESAMPLES:,} resamples); "
                 "n counts those seeds ('k of m' when only k of a setting's m trials finished), and one seed gives "
                 "no interval. The batch size is the global batch (per-worker batch × workers).")
    under = [f"{row['trial_id']}: {', '.join(found)}" for row in results.finished.to_dict("records")
             if (found := floors_under(row))]
    lines.append(f"Under a floor ({len(under)} of {len(results.finished)} finished trials; a finding of this budget, "
                 f"not a failure): " + "; ".join(under) + "." if under else
                 "Every finished trial is above its floors (random-init kNN and linear, raw-pixel kNN where measured).")
    return lines


def _result_tables(results: Results, above: str) -> list:
    """Accuracy, published anchors, speed and cost, floors; ``above`` each: the protocol."""
    anchors, floors = anchor_table(results), floor_table(results)
    no_anchors = "No published numbers: " + ("the manifest records no anchors (add 'anchors' to the sweep file)."
                                             if results.manifest else "a single trial has no manifest to record them.")
    cost = {**COST_COLUMNS, results.compute_unit: ("compute_hours", 1, 3)}
    evaluations, evaluation_floors = evaluation_columns(results), evaluation_floor_columns(results)
    return [
        Table("Accuracy", per_group(results, ACCURACY_COLUMNS), above),
        *([Table("Online probe, fewer labels, transfer", per_group(results, evaluations), above)]
          if evaluations else []),
        *([Table("Their floors: the random-init backbone", floor_table(results, evaluation_floors), above)]
          if evaluation_floors else []),
        Table("Published numbers next to ours", anchors, above) if anchors is not None else no_anchors,
        Table("Speed and cost", per_group(results, cost), f"{above} {results.compute_unit}: {results.compute_basis}."),
        Table("Floors: random-init backbone and raw pixels", floors, above) if len(floors)
        else "No floors: no trial got as far as measuring them.",
    ]


def _confidence(results: Results, improvements, acc_points: float) -> list:
    """P(A > B) between the contenders, the seeds a difference of ``acc_points`` needs, and the rankings that rest
    on less."""
    needed = seeds_needed_table(results, acc_points)
    return [
        Table("Probability of improvement", improvement_table(improvements),
              "P(A > B): the chance that a seed of A beats a seed of B (ties half), averaged over the batch sizes both "
              "ran, with its 95% stratified-bootstrap interval (Agarwal et al., NeurIPS 2021; rliable). A is the one "
              "with the higher mean kNN top-1; 0.5 is a coin toss. With few seeds the interval is too narrow: when "
              "every seed of A beats every seed of B, every resample does too.") if len(improvements)
        else "No probability of improvement: it needs two or more methods with finished trials at a common batch size.",
        Table("Seeds needed", needed,
              "Seeds per setting that a two-sample t-test (alpha 0.05, power 0.8) needs to detect an accuracy "
              f"difference of {acc_points:g} point{'s' if acc_points != 1 else ''} (--acc-tol), given the "
              "seed-to-seed std this sweep measured (pooled over each method's settings).") if len(needed) else "No seeds needed: no trial finished.",
        *(ranking_warnings(results, acc_points) or [f"Every ranking step in the tables is at least {acc_points:g} "
                                                    "points and detectable with the seeds run."]),
    ]


def _search_section(results: Results, folder: Path, above: str) -> list:
    """A tuned comparison's search: what it was, each method's trace, the values it chose beside the defaults,
    the budget each method used, and the final runs' test accuracy at the defaults and the chosen values."""
    record = results.search_record
    return [
        f"Every method got the same budget: {budget_text(record.trials, record.hours)} of at most {record.epochs} "
        f"epochs, sampled by {record.algorithm} search; ASHA stopped the trials whose kNN top-1 trailed at a rung. "
        "Every search trial was scored on a "
        f"validation split ({record.validation:g} of the train split, held out; the test split unread); the "
        "chosen values and the defaults then ran over the seeds above, on the test split.",
        figures.save(folder, "search_trace", "Search trace",
                     "each search trial's validation kNN top-1 at its last epoch, in the order sampled; hollow: "
                     "stopped early by ASHA (eN: after epoch N); ringed: the chosen trial",
                     figures.search_trace(results, figures.method_palette(results.search["method"].unique()))),
        Table("Chosen values beside the defaults", chosen_table(results),
              f"The chosen trial's values, numbers to {CHOSEN_DIGITS} significant digits."),
        Table("Budget used", search_budget_table(results),
              f"{results.compute_unit}: the search trials' wall time × what each held."),
        Table("Tuned vs defaults on the test set", tuned_vs_defaults(results),
              f"{above} Mean ± std over seeds; clear of ±1 std: the difference exceeds the two std's summed."),
    ]


def _weights(results: Results) -> Table:
    trials = results.trials.dropna(subset=["weights"])
    cards = [str(Path(path).with_name(f"{CARD_STEM}.md")) for path in trials["weights"]]
    return Table("Each trial's final backbone (safetensors) and its model card", pd.DataFrame(
        {"trial": trials["trial_id"], "status": trials["status"], "weights": trials["weights"], "model card": cards}),
        "The model card says what the backbone was trained on, how it scored beside its floors, and how to load it.",
        links=("weights", "model card"))


def _regression_checks(folder: Path) -> list:
    """The verdicts of every `byol-bench compare` run against this sweep as the candidate."""
    blocks = []
    for path in sorted(folder.glob("regression-vs-*.json")):
        blocks += report_blocks(Comparison.from_dict(json.loads(path.read_text(encoding="utf-8"))))
    return blocks or ["None yet: `byol-bench compare BASELINE this-folder` adds its verdicts here."]


def _history(results: Results, figures_dir: Path) -> list:
    return sweep_history_blocks(results.report_dir, results.manifest, figures_dir)


def _figures(results: Results, improvements, folder: Path, rows: str, columns: str) -> list[Figure]:
    palette = figures.method_palette(results.trials["method"].unique())
    seeds, floors = "error bars ±1 std over seeds", figures.FLOOR_CAPTION
    return [
        figures.save(folder, "accuracy_vs_batch_size", "Accuracy vs batch size",
                     f"kNN and linear top-1 per method against batch size (log2); {seeds}; {floors}",
                     figures.accuracy_vs_batch_size(results, palette)),
        figures.save(folder, "byol_vs_momentum", "BYOL accuracy vs momentum schedule",
                     f"BYOL's kNN and linear top-1 per momentum schedule, a shade per batch size (and other knobs); "
                     f"{seeds}; {floors}",
                     figures.byol_vs_momentum(results, palette)),
        figures.save(folder, "throughput_vs_batch_size", "Throughput vs batch size",
                     f"training images/s per method against batch size (log2); {seeds}",
                     figures.throughput_vs_batch_size(results, palette)),
        figures.save(folder, "accuracy_vs_compute", f"Accuracy vs {results.compute_unit}",
                     f"mean kNN top-1 per setting against {results.compute_unit} ({results.compute_basis}); "
                     f"the dashed line joins the Pareto front (ringed, labelled with the batch size); {floors}",
                     figures.accuracy_vs_compute(results, palette)),
        figures.save(folder, "training_curves", "Training curves",
                     "training loss per epoch and, where --knn-monitor-every was set, the kNN monitor's top-1 (%) "
                     "with the kNN floors, where online_probe was on, the online probe's test top-1 (%) with the "
                     "linear floor; mean and ±1 std over seeds", figures.training_curves(results, palette)),
        figures.save(folder, "probability_of_improvement", "Probability of improvement",
                     "P(A > B) per pair with its 95% stratified-bootstrap interval; hollow: one seed a side, no "
                     "interval; the grey line is 0.5, a coin toss", figures.improvement_probabilities(improvements)),
        figures.save(folder, "embedding_maps", "Embedding maps",
                     f"{_map_algorithm(results)} of the backbone's features of the same {EMBEDDING_POINTS} test images "
                     "(a seeded, stratified subset; L2-normalised, as the kNN sees them), coloured by class: the "
                     "random-init backbone of the first trial shown, then one trial per method (its lowest seed)",
                     figures.embedding_maps(results)),
        figures.save(folder, "heatmap", f"Mean kNN top-1: {rows} × {columns}",
                     f"mean kNN top-1 (%) over finished trials, {rows} × {columns}; "
                     f"{_averaged_over(results, rows, columns)}",
                     figures.heatmap(results, rows, columns)),
    ]


def _map_algorithm(results: Results) -> str:
    return " / ".join(results.embeddings["algorithm"].unique()) or "a 2-D map"


def _averaged_over(results: Results, *shown_axes: str) -> str:
    """What a cell of a figure that shows only ``shown_axes`` averages over: the seeds and the settings' other
    columns that vary."""
    hidden = [column for column in results.group if column not in shown_axes and results.finished[column].nunique() > 1]
    return "averaged over seeds" + "".join(f", {axis_label(column)}" for column in hidden)


def write_comparison(first: Path, second: Path) -> Path:
    """Two sources side by side, written into the first one's report folder; returns the HTML path.
    Where their protocols differ that comes first, and the table gives no deltas."""
    a, b = load_results(first), load_results(second)
    differences = protocol_differences(a, b)
    unfinished = [Table(f"{side}: {results.name}", unfinished_table(results))
                  for side, results in (("A", a), ("B", b)) if (results.trials["status"] != "ok").any()]
    sections = [
        ("Sources", [f"A: {a.source}. {status_counts(a)}. {protocol(a)}",
                     f"B: {b.source}. {status_counts(b)}. {protocol(b)}",
                     "Means over finished seeds; a setting only one side ran shows — on the other."]),
        ("Side by side", [Table(settings_title("A and B", dict.fromkeys([*a.other_axes, *b.other_axes])),
                                comparison_table(a, b, with_deltas=not differences))]),
        ("Trials that did not finish", unfinished or ["Every trial of both finished."]),
    ]
    if differences:
        sections.insert(0, ("Protocols differ", [
            "A and B were measured under different protocols, so their numbers are not comparable and the table "
            f"gives no B − A: {'; '.join(differences)}."]))
    return write_documents(a.report_dir, f"compare-{b.name}", f"byol-bench comparison: {a.name} vs {b.name}", sections)
