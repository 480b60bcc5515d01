"""Does a change leave the numbers as they were? Runs one sweep file at a past revision (in a git worktree of its own)
and at the working tree, on this machine with the same seeds, and compares every trial's accuracies, floors and
collapse indicators: exit 0 when they are identical, 1 (with the differences) when not.

    .venv/bin/python benchmarks/same_numbers.py 83e9a99 benchmarks/sweeps/quick.yaml

A refactoring that claims no behaviour change should pass it; the sweep's speed figures are not compared (they vary
from run to run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
COMPARED = ("status", "knn_top1", "knn_top5", "linear_top1", "linear_top5", "effective_rank", "embedding_std",
            "final_loss", "random_init_knn_top1", "random_init_linear_top1", "raw_pixels_knn_top1")


def run_sweep(tree: Path, sweep_file: Path, results: Path) -> pd.DataFrame:
    """The sweep's trials table, run with the package of ``tree``."""
    print(f"sweep {sweep_file.name} with the code in {tree} ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "byol_bench.cli", "sweep", str(sweep_file), "--results-dir",
                           str(results)], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"the sweep failed with the code in {tree}: {(done.stderr.strip() or 'no message').splitlines()[-1]}")
    [table] = results.glob("*/trials.parquet")
    return pd.read_parquet(table).set_index("trial_id").sort_index()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revision", help="the revision to compare the working tree with, e.g. HEAD~3")
    parser.add_argument("sweep", type=Path, help="a sweep file, e.g. benchmarks/sweeps/quick.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="same-numbers-") as scratch:
        past = Path(scratch) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(past), args.revision], cwd=REPO, check=True)
        try:
            before = run_sweep(past, args.sweep.resolve(), Path(scratch) / "before")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(past)], cwd=REPO, check=True)
        after = run_sweep(REPO, args.sweep.resolve(), Path(scratch) / "after")
    columns = [column for column in COMPARED if column in before and column in after]
    if list(before.index) != list(after.index):
        print(f"the trials differ: {sorted(set(before.index) ^ set(after.index))}")
        return 1
    differ = before[columns].compare(after[columns], result_names=(args.revision, "working tree"))
    print(f"{len(before)} trials, {len(columns)} columns ({', '.join(columns)}): "
          + ("identical" if differ.empty else f"{len(differ)} trial(s) differ"))
    if not differ.empty:
        print(differ.to_string())
    return 0 if differ.empty else 1


if __name__ == "__main__":
    sys.exit(main())
