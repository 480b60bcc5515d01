"""Does bf16 keep the accuracy of fp32? Prints, per setting of a sweep with a `precision: [fp32, bf16]` axis
(benchmarks/sweeps/quick-precision.yaml), kNN and linear top-1 as mean ± std over seeds in each precision, the
bf16 - fp32 difference with Welch's p, each setting's smallest margin over its random-init floors, and the
images/s ratio; and checks that the floors (evaluated in fp32) are the same in both.

    python benchmarks/precision_seeds.py results/quick-precision/trials.parquet
"""

from __future__ import annotations

import argparse

import pandas as pd
from scipy import stats

ACCURACIES = {"knn_top1": "random_init_knn_top1", "linear_top1": "random_init_linear_top1"}


def setting_rows(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for setting, group in trials.groupby("setting", sort=False):
        fp32, bf16 = group[group.precision == "fp32"], group[group.precision == "bf16"]
        row = {"setting": setting, "seeds": f"{len(fp32)} / {len(bf16)}"}
        for metric, floor in ACCURACIES.items():
            a, b = 100 * fp32[metric], 100 * bf16[metric]
            row[f"{metric} fp32"] = f"{a.mean():.1f} ± {a.std():.1f}"
            row[f"{metric} bf16"] = f"{b.mean():.1f} ± {b.std():.1f}"
            row[f"{metric} Δ"] = round(b.mean() - a.mean(), 1)
            row[f"{metric} p"] = round(stats.ttest_ind(a, b, equal_var=False).pvalue, 2) if min(len(a), len(b)) > 1 else None
            row[f"{metric} min margin"] = round(100 * (group[metric] - group[floor]).min(), 1)
        row["images/s bf16 / fp32"] = round(bf16.images_per_s.mean() / fp32.images_per_s.mean(), 2)
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trials", help="a sweep's trials.parquet (or .csv) with a precision axis")
    path = parser.parse_args().trials
    trials = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    trials = trials[trials.status == "ok"].copy()
    schedule = trials.momentum_schedule.fillna("").map(lambda value: f" {value}" if value else "")
    trials["setting"] = trials.method + " batch " + trials.batch_size.astype(str) + schedule
    same = trials.groupby("seed")[list(ACCURACIES.values())].nunique().max().max() == 1  # per seed, across precisions
    print(f"floors: {'the same in fp32 and bf16 trials' if same else 'DIFFER between fp32 and bf16 trials'}")
    print(setting_rows(trials).to_string(index=False))
    for metric in ACCURACIES:
        delta = 100 * (trials[trials.precision == "bf16"][metric].mean() - trials[trials.precision == "fp32"][metric].mean())
        print(f"{metric}: bf16 - fp32 over all {len(trials)} trials: {delta:+.2f} points")


if __name__ == "__main__":
    main()
