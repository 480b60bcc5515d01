"""The report's tables, as DataFrames of display strings."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from byol_bench.config import listed
from byol_bench.data.datasets import transfer_name
from byol_bench.models.methods import METHODS
from byol_bench.protocol import PROTOCOL
from byol_bench.regression.stats import (NO_INTERVAL, bootstrap_interval, detectable_difference, estimate, pooled_std,
                                         probability_of_improvement, seeds_needed, with_interval)
from byol_bench.report.load import GROUP, Results
from byol_bench.results.tables import EMPTY_MEANS, FLOORS, NOT_READ, axis_values
from byol_bench.trial.evaluate import low_label_metric, transfer_metric

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
# The accuracies that methods are ranked by, and their seeds counted for.
RANKED = {"kNN top-1": "knn_top1", "linear top-1": "linear_top1"}
PROVENANCE_COLUMNS = ["device_name", "threads", "git_revision", "torch", "lightly", "hostname"]
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
    """The tuning search's tables' figure: mean ± std (their rule reads the ±1 std ranges)."""
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
            f"{value('precision')}." + (f" Transfer evaluation on {value('transfer')}, normalised as the pretraining "
                                        "images." if "transfer" in results.trials else ""))


def protocol_differences(first: Results, second: Results) -> list[str]:
    """Each protocol knob in which the two sources differ, with both values."""
    values = {label: (protocol_value(first, column), protocol_value(second, column))
              for column, label in PROTOCOL.items()}
    return [f"{label} {a} in A but {b} in B" for label, (a, b) in values.items() if a != b]


def per_group(results: Results, columns: dict) -> pd.DataFrame:
    """One row per setting: method × global batch × momentum schedule (× workers, shown when a trial has more
    than one; × the sweep's other axes): the mean and 95% bootstrap interval over its finished seeds.

    Every group appears, also one whose trials all failed; n reads "k of m" when only k of its m
    trials finished, and says that one seed gives no interval. The methods come in the registry's order (the
    figures' legends list them so).
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
               "n": seed_count(len(finished), len(group))}
        row.update({label: estimate(finished[column], scale, decimals)
                    for label, (column, scale, decimals) in columns.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def evaluation_columns(results: Results) -> dict:
    """The accuracies that some trial's knobs added: the online probe's (its last epoch's), the low-label ones
    (kNN and linear top-1 with each fraction of ``probe_label_fractions`` below 1) and the transfer ones (kNN and
    linear top-1 on each of ``eval_datasets``)."""
    trials, columns = results.trials, {}
    if "online_probe_top1" in trials and trials["online_probe_top1"].notna().any():
        columns["online probe top-1, last epoch (%)"] = ("online_probe_top1", 100, 1)
    texts = trials["probe_label_fractions"].dropna() if "probe_label_fractions" in trials else []
    for fraction in sorted({float(item) for text in texts for item in listed(text)} - {1.0}):
        for metric, label in (("knn_top1", "kNN top-1"), ("linear_top1", "linear top-1")):
            columns[f"{label}, {fraction * 100:g}% of labels (%)"] = (low_label_metric(metric, fraction), 100, 1)
    texts = trials["eval_datasets"].dropna() if "eval_datasets" in trials else []
    for name in dict.fromkeys(transfer_name(item) for text in texts for item in listed(text)):
        for metric, label in (("knn_top1", "kNN top-1"), ("linear_top1", "linear top-1")):
            columns[f"transfer to {name}: {label} (%)"] = (transfer_metric(name, metric), 100, 1)
    return columns


def seed_count(finished: int, planned: int) -> str:
    """A setting's n: its finished seeds ("k of m" when not all m finished), and that one gives no interval."""
    count = str(finished) if finished == planned else f"{finished} of {planned}"
    return f"{count} ({NO_INTERVAL})" if finished == 1 else count


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


def evaluation_floor_columns(results: Results) -> dict:
    """The random-init backbone's low-label and transfer accuracies: the floors of ``evaluation_columns``."""
    return {f"random-init {label}": (f"random_init_{column}", scale, decimals)
            for label, (column, scale, decimals) in evaluation_columns(results).items()
            if f"random_init_{column}" in results.trials}


def floor_table(results: Results, columns: dict = FLOOR_COLUMNS) -> pd.DataFrame:
    """One row per floor setting, over every trial that measured its floors (they are measured before
    pretraining, so a diverged trial has them too): the ``columns``, the plain floors by default."""
    measured = results.trials[results.trials[list(FLOORS)].notna().any(axis=1)]
    varying = [column for column in FLOOR_EVALUATION if measured[column].nunique(dropna=False) > 1]
    labels = {**FLOOR_SETTING, **{column: FLOOR_EVALUATION[column] for column in varying}}
    rows = []
    for setting, group in measured.groupby(list(labels), dropna=False, sort=True):
        row = {label: text(value, EMPTY_MEANS.get(column, "—"))
               for (column, label), value in zip(labels.items(), setting)}
        # The trials of one setting measured the same floors: one number, unless they disagree.
        row.update({label: estimate(group[column].drop_duplicates(), scale, decimals)
                    for label, (column, scale, decimals) in columns.items()})
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
                         "ours": estimate(matched[column], 100, 1), "n": str(matched[column].notna().sum()),
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


def _contenders(results: Results) -> pd.DataFrame:
    """The finished trials, each with its contender (its method, and its variant where it has one: the momentum
    schedule, workers, the sweep's other axes) in the column 'contender'; the strata contenders meet in are the
    global batch sizes."""
    finished = results.finished
    return finished.assign(contender=[method if variant == NOT_READ else f"{method}, {variant}"
                                      for method, variant in zip(finished["method"], finished["variant"])])


def improvement_frame(results: Results) -> pd.DataFrame:
    """P(A > B) for every pair of contenders and ranked accuracy, over the batch sizes both ran (rliable's
    probability of improvement, averaged over those strata), with its 95% stratified-bootstrap interval (None
    with one seed a side). A is the contender with the higher mean kNN top-1."""
    trials = _contenders(results)
    order = trials.groupby("contender")["knn_top1"].mean().sort_values(ascending=False).index
    rows = []
    for first, second in ((a, b) for i, a in enumerate(order) for b in order[i + 1:]):
        for label, column in RANKED.items():
            runs = trials.dropna(subset=[column])
            strata = sorted(set(runs.loc[runs["contender"] == first, "global_batch_size"])
                            & set(runs.loc[runs["contender"] == second, "global_batch_size"]))
            if not strata:
                continue
            samples = [runs.loc[(runs["contender"] == name) & (runs["global_batch_size"] == batch), column]
                       .to_numpy(float) for batch in strata for name in (first, second)]
            single = all(len(sample) == 1 for sample in samples)  # one seed a side everywhere: P is 0, 1/2 or 1
            rows.append({"a": first, "b": second, "metric": label, "batch_sizes": ", ".join(map(str, strata)),
                         "seeds_a": min(map(len, samples[::2])), "seeds_b": min(map(len, samples[1::2])),
                         "p": None if single else float(probability_of_improvement(*samples)),
                         "interval": bootstrap_interval(samples, probability_of_improvement)})
    return pd.DataFrame(rows, columns=["a", "b", "metric", "batch_sizes", "seeds_a", "seeds_b", "p", "interval"])


def improvement_table(improvements: pd.DataFrame) -> pd.DataFrame:
    """``improvement_frame`` as a table: a row per pair, P(A > B) [interval] per ranked accuracy."""
    rows = {}
    for pair in improvements.itertuples():
        row = rows.setdefault((pair.a, pair.b), {"A": pair.a, "B": pair.b, "batch sizes": pair.batch_sizes,
                                                 "seeds (A, B)": f"{pair.seeds_a}, {pair.seeds_b}"})
        row[f"P(A > B), {pair.metric}"] = ("— (one seed a side: not tested)" if pd.isna(pair.p)
                                           else with_interval(pair.p, pair.interval, 2) if pair.interval is not None
                                           else f"{pair.p:.2f} ({NO_INTERVAL})")
    return pd.DataFrame(list(rows.values()))


def _setting_runs(trials: pd.DataFrame, group: list[str], column: str) -> list[np.ndarray]:
    return [rows[column].dropna().to_numpy(float) * 100 for _, rows in trials.groupby(group)]


def seeds_needed_table(results: Results, acc_points: float) -> pd.DataFrame:
    """Per method: the seed-to-seed std of each ranked accuracy (pooled over its settings) and the seeds per
    setting a two-sample t-test needs to detect ``acc_points`` points (alpha 0.05, power 0.8)."""
    rows = []
    for method in in_registry_order(results.finished["method"]):
        trials = results.finished[results.finished["method"] == method]
        counts = trials.groupby(results.group).size()
        row = {"method": method, "seeds run per setting": distinct(counts.to_frame("n"), "n")}
        for label, column in RANKED.items():
            std = pooled_std(_setting_runs(trials, results.group, column))
            needed = seeds_needed(std, acc_points) if std is not None else None
            row[f"{label}: std over seeds (points)"] = "— (one seed a setting)" if std is None else f"{std:.2f}"
            row[f"{label}: seeds needed"] = text(needed, "—" if std is None else "over 1000")
        rows.append(row)
    return pd.DataFrame(rows)


def ranking_warnings(results: Results, acc_points: float) -> list[str]:
    """A line for each step of a ranking (neighbours in mean accuracy at one batch size) that rests on a difference
    under ``acc_points``, or under what the seeds of the two can detect (alpha 0.05, power 0.8), or on one seed."""
    if len(results.finished) and results.finished.groupby(results.group).size().max() == 1:
        return ["One seed a setting: no ranking in these tables is tested (any order could be seed noise); run more "
                "seeds to tell the methods apart (Seeds needed says how many a sweep like this one takes)."]
    trials, lines = _contenders(results), []
    for batch, (label, column) in itertools.product(sorted(trials["global_batch_size"].unique()), RANKED.items()):
        runs = trials[trials["global_batch_size"] == batch].dropna(subset=[column])
        by_contender = {name: rows[column].to_numpy(float) * 100 for name, rows in runs.groupby("contender")}
        ranked = sorted(by_contender, key=lambda name: -by_contender[name].mean())
        for upper, lower in zip(ranked, ranked[1:]):
            a, b = by_contender[upper], by_contender[lower]
            gap, seeds = a.mean() - b.mean(), min(len(a), len(b))
            detectable = detectable_difference(pooled_std([a, b]), seeds) if seeds >= 2 else None
            if seeds < 2:
                why = "one seed: no difference is tested"
            elif gap < acc_points:
                why = f"under the {acc_points:g}-point minimum effect"
            elif gap < detectable:
                why = f"under the {detectable:.1f} points that {seeds} seeds can detect"
            else:
                continue
            lines.append(f"Ranking warning (batch {batch}, {label}): {upper} above {lower} by {gap:.1f} points, {why}.")
    return lines
