import json
import subprocess

import numpy as np
import pandas as pd
import pytest

from byol_bench.cli import main
from byol_bench.config import resolved_config
from byol_bench.errors import UserError
from byol_bench.regression import backfill as backfill_module
from byol_bench.regression import history
from byol_bench.regression.backfill import first_regressed
from byol_bench.regression.history import (append, bench_entry, change_points, load_history, regressions, series_points,
                                           sweep_entry, sweep_protocol)
from byol_bench.report import write_report
from byol_bench.results.tables import trial_row, write_json, write_tables
from byol_bench.trial.provenance import git_commit
from byol_bench.trial.result import Metrics, TrialResult

# Run-to-run spread of one trial's images/s on a busy shared runner, as a coefficient of variation: the noise the
# detector must see through.
NOISE = 0.10


def series(values, metric="images_per_s", setting="method=byol", machine="cpu A", protocol="quick 0") -> pd.DataFrame:
    """A history of one series, a run per revision rev00, rev01, ... in commit order."""
    return pd.DataFrame({"source": "sweep quick", "protocol": protocol, "machine": machine, "setting": setting,
                         "metric": metric, "value": values, "revision": [f"rev{i:02d}" for i in range(len(values))],
                         "commit_time": [f"2026-12-01T00:{i:02d}:00" for i in range(len(values))],
                         "run_time": "", "run_id": [f"{setting}-{i}" for i in range(len(values))]})


def noisy(levels, seed) -> np.ndarray:
    return np.asarray(levels, dtype=float) * (1 + NOISE * np.random.default_rng(seed).standard_normal(len(levels)))


def test_a_planted_slowdown_is_named_at_its_revision_and_a_drift_is_found():
    slowdown = noisy(100 * np.where(np.arange(30) < 15, 1.0, 0.85), seed=1)  # 15% slower from rev15 on
    drift = noisy(100 * 0.97 ** np.arange(20), seed=2)  # 3% slower at every revision
    _, changes = series_points(pd.concat([series(slowdown), series(drift, setting="method=simclr")]))
    planted = changes[changes["setting"] == "method=byol"]
    assert list(planted["after_revision"]) == ["rev15"] and list(planted["before_revision"]) == ["rev14"]
    assert planted["direction"].iloc[0] == "regression" and -20 < planted["change_percent"].iloc[0] < -10
    drifted = changes[changes["setting"] == "method=simclr"]
    assert len(drifted) >= 1 and set(drifted["direction"]) == {"regression"}
    assert set(regressions(changes, tolerance_percent=5)["setting"]) == {"method=byol", "method=simclr"}


def test_pure_noise_raises_no_change_point_and_one_outlier_is_not_a_change():
    # About 1 series in 100 (alpha 0.01); benchmarks/history_detector.py prints the rate over 1,000 seeds.
    flagged = [seed for seed in range(20) if change_points(noisy(np.full(30, 100.0), seed))]
    assert len(flagged) <= 1
    outlier = np.full(12, 100.0) + np.arange(12) % 3  # one wild run at the end: a change needs two runs after it
    outlier[-1] = 60
    assert change_points(outlier) == []


def test_a_step_up_in_a_lower_is_better_metric_is_a_regression():
    _, changes = series_points(series(noisy([1.0] * 10 + [1.3] * 10, seed=3), metric="median_s"))
    assert list(changes["direction"]) == ["regression"] and changes["after_revision"].iloc[0] in ("rev09", "rev10")


def test_other_machine_types_are_series_of_their_own():
    fast = series(noisy([100.0] * 10, seed=4), machine="cpu A")
    slow = series(noisy([60.0] * 10, seed=5), machine="cpu B")
    points, changes = series_points(pd.concat([fast, slow]))
    assert changes.empty and points.groupby("machine")["level"].nunique().to_dict() == {"cpu A": 1, "cpu B": 1}


def make_sweep(folder, knn=0.7, speed=400.0, complete=True):
    """A finished two-setting sweep at this checkout's revision, as a sweep writes it."""
    rows = [trial_row(f"method={method},seed={seed}", resolved_config({"method": method, "seed": seed}), "ok",
                      TrialResult("ok", {}, metrics=Metrics(knn_top1=knn, linear_top1=knn, images_per_s=speed + seed,
                                                            peak_memory_bytes=1e9)))
            for method in ("byol", "simclr") for seed in (0, 1)]
    write_tables(folder, rows, [])
    write_json(folder / "manifest.json", {"sweep": folder.name, "axes": ["method", "seed"], "fixed": {"epochs": 1},
                                          "git_revision": git_commit().revision, "started": str(folder),
                                          "complete": complete, "versions": {"torch": "2.x"}})
    return folder


def test_a_sweep_is_appended_once_with_its_revision_and_machine(tmp_path):
    if git_commit() is None:
        pytest.skip("not a git checkout")
    entry = sweep_entry(make_sweep(tmp_path / "quick"))
    assert append(entry, tmp_path / "history") and not append(entry, tmp_path / "history")
    assert len(list((tmp_path / "history" / "runs").iterdir())) == 1
    stored = load_history(tmp_path / "history")
    byol = stored[(stored["setting"] == "method=byol")].set_index("metric")
    assert byol.loc["images_per_s", "value"] == 400.5
    assert byol.loc["images_per_s", "spread"] == pytest.approx(0.7071, 1e-3)
    assert set(stored["setting"]) == {"method=byol", "method=simclr"} and "seed" not in stored["setting"].iloc[0]
    assert stored["revision"].iloc[0] == git_commit().revision and stored["machine"].iloc[0] == history.this_machine()
    unfinished = make_sweep(tmp_path / "interrupted", complete=False)
    with pytest.raises(UserError, match="not a finished sweep"):
        sweep_entry(unfinished)


def test_a_benchmark_run_keeps_its_own_machine_and_commit(tmp_path):
    saved = {"machine_info": {"cpu": {"brand_raw": "Some CPU", "flags": ["avx2", "fma"], "count": 8}},
             "commit_info": {"id": "abc123", "time": "2026-12-01T00:00:00+00:00", "branch": "main", "dirty": False},
             "datetime": "2026-12-01T00:01:00",
             "benchmarks": [{"name": "test_knn", "stats": {"median": 0.5, "iqr": 0.02}}]}
    (tmp_path / "0001.json").write_text(json.dumps(saved))
    entry = bench_entry(tmp_path / "0001.json")
    assert entry[["setting", "metric", "value", "spread", "revision"]].values.tolist() == [
        ["test_knn", "median_s", 0.5, 0.02, "abc123"]]
    assert entry["machine"].iloc[0] == "Some CPU (avx2), no GPU, 8 cores"


def test_history_commands_report_check_and_refuse_bad_input(tmp_path, capsys):
    runs = tmp_path / "history" / "runs"
    runs.mkdir(parents=True)
    steady, slower = series(noisy([100.0] * 12, seed=6)), series(noisy([100.0] * 6 + [80.0] * 6, seed=7), setting="b")
    for run_id, run in pd.concat([steady, slower]).groupby("run_id"):
        run.to_parquet(runs / f"{run_id}.parquet")
    folder = ["--results-dir", str(tmp_path)]  # the history of the sweeps in tmp_path: tmp_path/history
    assert main(["history", *folder]) == 0
    assert "regression at rev06" in capsys.readouterr().out
    assert (tmp_path / "history" / "figures" / "history-images_per_s.png").exists()
    assert "figures/history-images_per_s.png" in (tmp_path / "history" / "history.md").read_text()
    assert main(["history", "check", *folder]) == 1
    assert "REGRESSED sweep quick · b · images_per_s" in capsys.readouterr().out
    assert main(["history", "check", "--history-dir", str(tmp_path / "history")]) == 1  # the same folder, named
    assert main(["history", "check", "--series", "byol", *folder]) == 0
    assert main(["history", "check", "--tolerance", "25", *folder]) == 0
    capsys.readouterr()
    assert main(["history", "--metric", "knn", *folder]) == 2
    assert main(["history", "check", "--history-dir", str(tmp_path / "none")]) == 2
    assert main(["history", "backfill", "HEAD..HEAD", "--sweep", "benchmarks/sweeps/history-tiny.yaml", *folder]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "choose one of: images_per_s" in errors[0] and "no runs yet" in errors[1]
    assert "no revision in HEAD..HEAD" in errors[2]


def test_a_sweep_report_shows_its_own_series_once_the_history_holds_two_runs(tmp_path):
    """Only the series of the report's sweep and protocol, from results/history beside it; none before a second run."""
    folder = make_sweep(tmp_path / "results" / "quick")
    write_report(folder)
    assert "No series of this sweep and protocol" in (folder / "report.md").read_text()
    runs = tmp_path / "results" / "history" / "runs"
    runs.mkdir(parents=True)
    protocol = sweep_protocol("quick", json.loads((folder / "manifest.json").read_text()))
    step = np.r_[np.full(6, 400.0), np.full(6, 300.0)] * (1 + 0.02 * np.random.default_rng(8).standard_normal(12))
    ours = series(step, protocol=protocol)
    other_protocol = series(noisy([100.0] * 12, seed=9), setting="method=simclr", protocol="quick 1")
    for run_id, run in pd.concat([ours, other_protocol]).groupby(["run_id", "protocol"]):
        run.to_parquet(runs / f"{run_id[0]}-{run_id[1][-1]}.parquet")
    write_report(folder)
    report = (folder / "report.md").read_text()
    history_section = report[report.index("## History"):report.index("## Figures")]
    assert "regression at rev06" in history_section
    assert "method=simclr" not in history_section and "figures/history-images_per_s.png" in history_section
    assert (folder / "figures" / "history-images_per_s.png").exists()


def test_bisect_finds_the_first_worse_revision_in_few_steps_and_skips_unmeasurable_ones():
    revisions = [f"rev{i:02d}" for i in range(16)]
    worse = {revision: (0.0 if i < 11 else 12.0) + np.random.default_rng(i).normal(0, 1) for i, revision in
             enumerate(revisions)}
    measured = []

    def worse_percent(revision):
        measured.append(revision)
        return None if revision in ("rev10", "rev15") else worse[revision]  # the sweep failed there

    assert first_regressed(revisions, worse_percent, tolerance_percent=5) == "rev11"
    assert len(measured) <= 2 + 5  # the end (and the skipped one before it), then a binary search of 15
    assert first_regressed(revisions[:11], lambda revision: worse[revision], 5) is None  # the end is fine
    assert first_regressed(["a", "b"], lambda revision: None, 5) is None  # nothing measurable


def test_bisect_refuses_a_range_without_revisions(tmp_path, capsys):
    if git_commit() is None:
        pytest.skip("not a git checkout")
    assert main(["history", "bisect", "HEAD..HEAD", "--sweep", "benchmarks/sweeps/history-tiny.yaml", "--metric",
                 "knn_top1", "--setting", "method=byol", "--history-dir", str(tmp_path / "history")]) == 2
    assert "no revision in HEAD..HEAD" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["backfill"], ["bisect", "--metric", "knn_top1", "--setting", "method=byol"]])
def test_a_missing_sweep_file_is_refused_before_any_worktree(tmp_path, capsys, command):
    if git_commit() is None:
        pytest.skip("not a git checkout")
    worktrees = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True).stdout
    assert main(["history", command[0], "HEAD~2..HEAD", "--sweep", str(tmp_path / "missing.yaml"), *command[1:],
                 "--history-dir", str(tmp_path / "history")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.yaml" in err
    assert subprocess.run(["git", "worktree", "list"], capture_output=True, text=True).stdout == worktrees


def test_a_backfill_that_measured_nothing_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(backfill_module, "_repo", lambda: tmp_path)
    monkeypatch.setattr(backfill_module, "_revisions", lambda repo, revisions, paths: ["a" * 40, "b" * 40])
    measured = {"a" * 40: None, "b" * 40: None}  # the sweep failed at both
    monkeypatch.setattr(backfill_module, "_sweep_at", lambda repo, revision, *rest: measured[revision])
    backfill = ["history", "backfill", "A..B", "--sweep", "benchmarks/sweeps/history-tiny.yaml",
                "--history-dir", str(tmp_path / "history")]
    assert main(backfill) == 1
    assert "the sweep failed at 2 of 2 revision(s)" in capsys.readouterr().out
    measured["b" * 40] = pd.DataFrame()
    assert main(backfill) == 0
    assert "the sweep failed at 1 of 2 revision(s): aaaaaaaaaaaa" in capsys.readouterr().out
