"""The report's tables, as DataFrames of display strings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from byol_bench.methods import METHODS
from byol_bench.report.load import GROUP, Results
from byol_bench.results import EMPTY_MEANS, FLOORS, axis_values

# label: (column, scale, decimals). Accuracies and fractions are shown in %.
# kNN top-1 is the final epoch's; the best epoch's is what lightly's benchmarks report (the monitor every epoch).
ACCURACY_COLUMNS = {"kNN top-1 (%)": ("knn_top1", 100, 1), "kNN top-1, best epoch (%)": ("knn_top1_best", 100, 1),
                    "kNN top-5 (%)": ("knn_top5", 100, 1), "linear top-1 (%)": ("linear_top1", 100, 1),
                    "linear top-5 (%)": ("linear_top5", 100, 1)}
FLOOR_COLUMNS = {"random-init kNN top-1 (%)": ("random_init_knn_top1", 100, 1),
                 "random-init kNN top-5 (%)": ("random_init_knn_top5", 100, 1),
                 "random-init linear top-1 (%)": ("random_init_linear_top1", 100, 1),
                 "random-init linear top-5 (%)": ("random_init_linear_top5", 100, 1),
                 "raw-pixels kNN top-1 (%)": ("raw_pixels_knn_top1", 100, 1),
                 "raw-pixels kNN top-5 (%)": ("raw_pixels_knn_top5", 100, 1)}
COST_COLUMNS = {"images/s": ("images_per_s", 1, 0), "step time (ms)": ("step_time_median_s", 1000, 1),
                "data wait (%)": ("data_wait_fraction", 100, 1), "peak memory (MiB)": ("peak_memory_bytes", 2**-20, 0),
                "pretraining (s)": ("pretrain_time_s", 1, 1)}
COMPARED = {"kNN top-1 (%)": ("knn_top1", 100, 1), "linear top-1 (%)": ("linear_top1", 100, 1),
            "images/s": ("images_per_s", 1, 0)}
PROVENANCE_COLUMNS = ["device_name", "threads", "git_revision", "torch", "lightly", "hostname"]
# The knobs every number depends on: two sources that differ in one are not comparable.
PROTOCOL_KNOBS = {"dataset": "data set", "subset": "train subset", "test_subset": "test subset", "backbone": "backbone",
                  "epochs": "pretraining epochs", "knn_k": "kNN k", "knn_t": "kNN T", "probe_epochs": "probe epochs",
                  "probe_lr": "probe lr"}
# The floors depend on the data and the backbone's seeded initialisation, not on the method or the batch...
FLOOR_SETTING = {"dataset": "data set", "subset": "subset", "backbone": "backbone", "seed": "seed"}
# ...and on the evaluation, whose knobs get a column where the trials differ in them.
FLOOR_EVALUATION = {"test_subset": "test subset", "knn_k": "kNN k", "knn_t": "kNN T", "probe_epochs": "probe epochs",
                    "probe_lr": "probe lr"}
# A published anchor's batch size is the global batch.
ANCHOR_COLUMNS = {"batch_size": "global_batch_size"}
STATUS_MEANING = {"diverged": "the loss became non-finite; training stopped",
                  "collapsed": "the projections collapsed (effective rank below the threshold; see effective_rank)",
                  "incomplete": "started but did not finish (the sweep was interrupted; resume it with --resume)",
                  "missing": "in the manifest's grid but absent from trials.parquet",
                  "failed": "failed without an error message"}


def text(value, empty: str = "—") -> str:
    """A value as a table shows it: whole numbers without '.0', nothing as ``empty``."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return empty
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def mean_std(values: pd.Series, scale: float, decimals: int) -> str:
    values = values.dropna().astype(float) * scale
    if values.empty:
        return "—"
    if len(values) == 1:
        return f"{values.iloc[0]:.{decimals}f}"
    return f"{values.mean():.{decimals}f} ± {values.std():.{decimals}f}"


def distinct(trials: pd.DataFrame, column: str, empty: str = "—") -> str:
    """The column's different values, in order, as one string."""
    values = set(trials[column].dropna()) if column in trials else set()
    try:
        ordered = sorted(values)  # numbers in numeric order
    except TypeError:  # a column mixing kinds of values
        ordered = sorted(values, key=str)
    return ", ".join(text(value) for value in ordered) or empty


def protocol_value(results: Results, column: str) -> str:
    """A knob's values over the finished trials (over all trials when none finished)."""
    trials = results.finished if not results.finished.empty else results.trials
    return distinct(trials, column, EMPTY_MEANS.get(column, "—"))


def protocol(results: Results) -> str:
    """The protocol every number in the tables was measured with (several values where trials differ)."""
    def value(column: str) -> str:
        return protocol_value(results, column)

    return (f"Protocol: data set {value('dataset')} (train subset {value('subset')}, test subset "
            f"{value('test_subset')}), backbone {value('backbone')}, {value('epochs')} pretraining epochs; "
            f"kNN k = {value('knn_k')}, T = {value('knn_t')}; linear probe {value('probe_epochs')} epochs at lr "
            f"{value('probe_lr')} on frozen features; device {value('device')} ({value('device_name')}), training step in "
            f"{value('precision')}.")


def protocol_differences(first: Results, second: Results) -> list[str]:
    """Each protocol knob in which the two sources differ, with both values."""
    values = {label: (protocol_value(first, column), protocol_value(second, column))
              for column, label in PROTOCOL_KNOBS.items()}
    return [f"{label} {a} in A but {b} in B" for label, (a, b) in values.items() if a != b]


def per_group(results: Results, columns: dict) -> pd.DataFrame:
    """One row per setting: method × global batch × momentum schedule (× workers, shown when a trial has more
    than one; × the sweep's other axes): mean ± std over its finished seeds.

    Every group appears, also one whose trials all failed; n reads "k of m" when only k of its m
    trials finished. The methods come in the registry's order (the figures' legends list them so).
    """
    rows, ddp = [], results.trials["workers"].max() > 1
    order = in_registry_order(results.trials["method"])
    groups = sorted(results.trials.groupby(results.group, sort=True), key=lambda item: order.index(item[0][0]))
    for key, group in groups:
        setting = dict(zip(results.group, key))
        finished = group[group["status"] == "ok"]
        row = {"method": setting["method"], "batch size": setting["global_batch_size"],
               "momentum schedule": setting["momentum_schedule"], **({"workers": setting["workers"]} if ddp else {}),
               **{axis_label(axis): text(setting[axis]) for axis in results.other_axes},
               "n": str(len(finished)) if len(finished) == len(group) else f"{len(finished)} of {len(group)}"}
        row.update({label: mean_std(finished[column], scale, decimals)
                    for label, (column, scale, decimals) in columns.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def axis_label(axis: str) -> str:
    """A knob's name as a table's column label."""
    return axis.replace("_", " ")


def settings_title(start: str, other_axes) -> str:
    """'<start> per method × batch size × momentum schedule', × each of the sweeps' other axes."""
    return " × ".join([f"{start} per method", "batch size", "momentum schedule", *map(axis_label, other_axes)])


def in_registry_order(methods) -> list:
    """The distinct ``methods``: the registered ones in the registry's order, then any other (from an older
    results folder) by name. Every table, legend and colour of a report lists methods so."""
    names = set(methods)
    return [method for method in METHODS if method in names] + sorted(names - set(METHODS))


def floor_table(results: Results) -> pd.DataFrame:
    """One row per floor setting, over every trial that measured its floors (they are measured before
    pretraining, so a diverged trial has them too)."""
    measured = results.trials[results.trials[list(FLOORS)].notna().any(axis=1)]
    varying = [column for column in FLOOR_EVALUATION if measured[column].nunique(dropna=False) > 1]
    labels = {**FLOOR_SETTING, **{column: FLOOR_EVALUATION[column] for column in varying}}
    rows = []
    for setting, group in measured.groupby(list(labels), dropna=False, sort=True):
        row = {label: text(value, EMPTY_MEANS.get(column, "—"))
               for (column, label), value in zip(labels.items(), setting)}
        # The trials of one setting measured the same floors: one number, unless they disagree.
        row.update({label: mean_std(group[column].drop_duplicates(), scale, decimals)
                    for label, (column, scale, decimals) in FLOOR_COLUMNS.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def anchor_table(results: Results) -> pd.DataFrame | None:
    """The manifest's published numbers next to ours: an anchor's keys that are trial columns select
    our finished trials, its accuracy keys are the published values (fractions, like ours), each compared
    with our metric of that name: ``knn_top1_best`` (the best epoch's, as lightly reports kNN) or
    ``knn_top1`` (the final epoch's); the metric column says which."""
    metrics = {column: label for label, (column, _, _) in ACCURACY_COLUMNS.items()}
    metrics["knn_top1"] = "kNN top-1, final epoch (%)"
    rows = []
    for anchor in results.manifest.get("anchors") or []:
        selection = {key: value for key, value in anchor.items() if key in results.trials and key not in metrics}
        matched = results.finished
        for key, value in selection.items():
            column = ANCHOR_COLUMNS.get(key, key)
            matched = matched[matched[column] == value]
        for column in (column for column in metrics if column in anchor):
            rows.append({"setting": ", ".join(f"{key} {value}" for key, value in selection.items()),
                         "metric": metrics[column], "published": f"{anchor[column] * 100:.1f}",
                         "ours": mean_std(matched[column], 100, 1), "n": str(matched[column].notna().sum()),
                         "source": str(anchor.get("source", ""))})
    return pd.DataFrame(rows) if rows else None


def unfinished_table(results: Results) -> pd.DataFrame:
    """Every trial that is not 'ok', with its error text (or what its status means)."""
    unfinished = results.trials[results.trials["status"] != "ok"]
    return pd.DataFrame({
        "trial": unfinished["trial_id"], "status": unfinished["status"],
        "error": [error if isinstance(error, str) and error else STATUS_MEANING.get(status, "—")
                  for error, status in zip(unfinished["error"], unfinished["status"])],
    })


def provenance_table(results: Results) -> pd.DataFrame:
    return pd.DataFrame({"what": PROVENANCE_COLUMNS,
                         "values": [distinct(results.trials, column) for column in PROVENANCE_COLUMNS]})


def status_counts(results: Results) -> str:
    total, counts = len(results.trials), results.trials["status"].value_counts()
    return f"{total} trial{'s' if total != 1 else ''}: " + ", ".join(f"{n} {status}" for status, n in counts.items())


def _group_means(results: Results, other_axes: list[str]) -> pd.DataFrame:
    """n and the mean of each compared column over the finished seeds, per setting of GROUP and ``other_axes``
    (an axis of the other source only is a key here too: this source's values of that knob)."""
    finished = results.finished.assign(**{axis: axis_values(results.finished, axis) for axis in other_axes})
    means = {column: (column, "mean") for column, _, _ in COMPARED.values()}
    return finished.groupby([*GROUP, *other_axes]).agg(n=("trial_id", "size"), **means)


def _formatted(values: pd.Series, spec: str) -> list[str]:
    return ["—" if np.isnan(value) else format(value, spec) for value in values]


def comparison_table(first: Results, second: Results, with_deltas: bool = True) -> pd.DataFrame:
    """Settings matched by method, global batch, momentum schedule, workers and either sweep's other axes: A's
    and B's means and B − A (left blank without ``with_deltas``)."""
    other_axes = list(dict.fromkeys([*first.other_axes, *second.other_axes]))
    both = _group_means(first, other_axes).merge(_group_means(second, other_axes), how="outer", left_index=True,
                                                 right_index=True, suffixes=("_a", "_b")).reset_index()
    table = pd.DataFrame({"method": both["method"], "batch size": both["global_batch_size"],
                          "momentum schedule": both["momentum_schedule"], "workers": both["workers"],
                          **{axis_label(axis): both[axis].map(text) for axis in other_axes},
                          "n A": both["n_a"].map(text), "n B": both["n_b"].map(text)})
    if (table["workers"] == 1).all():
        table = table.drop(columns="workers")
    for label, (column, scale, decimals) in COMPARED.items():
        a, b = both[f"{column}_a"] * scale, both[f"{column}_b"] * scale
        table[f"{label} A"] = _formatted(a, f".{decimals}f")
        table[f"{label} B"] = _formatted(b, f".{decimals}f")
        table[f"{label} B − A"] = _formatted(b - a, f"+.{decimals}f") if with_deltas else ""
    return table


def chosen_table(results: Results) -> pd.DataFrame:
    """Each method's searched knobs: the value it runs with untuned beside the one its search chose."""
    record = results.search_record
    return pd.DataFrame([{"method": method, "knob": axis_label(key), "default": text(value),
                          "chosen": text(record.chosen.get(method, {}).get(key), "none: no search trial finished")}
                         for method in in_registry_order(record.defaults)
                         for key, value in record.defaults[method].items()])


def search_budget_table(results: Results) -> pd.DataFrame:
    """What each method's search spent: trials (stopped early, failed or diverged), trial-epochs and compute, and
    the validation kNN top-1 of the trial it chose."""
    search, rows = results.search, []
    for method in in_registry_order(search["method"]):
        trials = search[search["method"] == method]
        rows.append({"method": method, "trials": len(trials), "stopped early": int(trials["stopped_early"].sum()),
                     "failed or diverged": int((trials["status"] != "ok").sum()),
                     "trial-epochs": int(trials["epochs"].sum()),
                     results.compute_unit: f"{trials['compute_hours'].sum():.3f}",
                     "chosen trial's validation kNN top-1 (%)":
                         mean_std(trials.loc[trials["chosen"], "knn_top1"], 100, 1)})
    return pd.DataFrame(rows)


def tuned_vs_defaults(results: Results) -> pd.DataFrame:
    """Per method, the final runs' test kNN top-1 at its defaults and at its chosen values (mean ± std over
    seeds), the difference, and whether it is clear of the seeds' spread (the ±1 std ranges do not overlap)."""
    record, rows = results.search_record, []
    for method in in_registry_order(record.defaults):
        runs = {name: _matching(results.finished, method, values)["knn_top1"] * 100
                for name, values in (("defaults", record.defaults[method]), ("tuned", record.chosen.get(method)))}
        row = {"method": method, **{f"{name} kNN top-1 (%)": f"{mean_std(values, 1, 1)} (n {len(values)})"
                                    for name, values in runs.items()}}
        difference = runs["tuned"].mean() - runs["defaults"].mean()
        spread = runs["tuned"].std(ddof=1) + runs["defaults"].std(ddof=1)  # NaN with one seed a side
        row["tuned − defaults (points)"] = "—" if np.isnan(difference) else f"{difference:+.1f}"
        row["clear of ±1 std"] = "—" if np.isnan(spread) or np.isnan(difference) else \
            "yes" if abs(difference) > spread else "no"
        rows.append(row)
    return pd.DataFrame(rows)


def _matching(trials: pd.DataFrame, method: str, values: dict | None) -> pd.DataFrame:
    """The trials of ``method`` run at the searched ``values`` (none without values)."""
    if values is None:
        return trials.iloc[:0]
    matched = trials[trials["method"] == method]
    for key, value in values.items():
        matched = matched[matched[key] == value]
    return matched
