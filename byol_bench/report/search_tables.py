"""A tuned comparison's tables: the values each method's search chose, its budget, and tuned against defaults."""

from __future__ import annotations

import numpy as np
import pandas as pd

from byol_bench.report.load import Results
from byol_bench.report.tables import axis_label, in_registry_order, mean_std, text


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
