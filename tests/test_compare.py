import functools
import json

import pytest

from byol_bench.cli import main
from byol_bench.config import make_config, resolved_config
from byol_bench.data.datasets import data_root, find_fashion_mnist
from byol_bench.errors import UserError
from byol_bench.regression.compare import Tolerances, compare_runs, load_run, save_baseline
from byol_bench.report.regression import to_markdown
from byol_bench.results.tables import trial_row, write_json, write_tables
from byol_bench.trial.evaluate import collapse_rank
from byol_bench.trial.result import Metrics, TrialResult
from byol_bench.trial.run import run_trial

AXES = ["method", "batch_size", "momentum_schedule", "seed"]


def make_sweep(folder, name, groups, fixed=None, axes=AXES):
    """A sweep folder as a sweep writes it; groups: {(method, batch, *(knob, value)): [(knn, linear, images_per_s,
    memory), ...]}."""
    rows = []
    for (method, batch, *others), seeds in groups.items():
        for seed, (knn, linear, speed, memory) in enumerate(seeds):
            knobs = {"method": method, "batch_size": batch, **dict(others), "seed": seed}
            trial_id = ",".join(f"{knob}={value}" for knob, value in knobs.items())
            result = TrialResult("ok", knobs, metrics=Metrics(knn_top1=knn, linear_top1=linear, images_per_s=speed,
                                                              peak_memory_bytes=memory))
            rows.append(trial_row(trial_id, resolved_config(knobs), "ok", result))
    write_tables(folder / name, rows, [])
    write_json(folder / name / "manifest.json", {"sweep": name, "axes": axes, "fixed": fixed or {"epochs": 4}})
    return folder / name


SEEDS = [(0.700, 0.780, 400, 1e9), (0.706, 0.784, 410, 1e9), (0.703, 0.781, 395, 1e9)]


def shifted(seeds, knn=0.0, speed=1.0, memory=1.0):
    return [(k + knn, lin, s * speed, m * memory) for k, lin, s, m in seeds]


def test_other_seeds_of_an_unchanged_config_are_not_flagged(tmp_path):
    base = make_sweep(tmp_path, "base", {("byol", 256): SEEDS, ("simclr", 256): SEEDS})
    rerun = [(k + 0.003 * (-1) ** i, lin, s * 1.03, m) for i, (k, lin, s, m) in enumerate(SEEDS)]
    cand = make_sweep(tmp_path, "cand", {("byol", 256): rerun, ("simclr", 256): rerun})
    result = compare_runs(load_run(base), load_run(cand))
    assert not result.regressed
    assert {g.knn_top1.verdict for g in result.groups} == {"unchanged"}
    assert result.groups[0].knn_top1.test == "welch"


def test_a_significant_accuracy_drop_is_a_regression(tmp_path):
    base = make_sweep(tmp_path, "base", {("byol", 256): SEEDS, ("simclr", 256): SEEDS})
    cand = make_sweep(tmp_path, "cand", {("byol", 256): shifted(SEEDS, knn=-0.05), ("simclr", 256): SEEDS})
    result = compare_runs(load_run(base), load_run(cand))
    verdicts = {g.group["method"]: g.knn_top1.verdict for g in result.groups}
    assert verdicts == {"byol": "regressed", "simclr": "unchanged"} and result.regressed
    byol = [g for g in result.groups if g.group["method"] == "byol"][0]
    assert byol.knn_top1.delta_points == pytest.approx(-5.0) and byol.knn_top1.p_value < 0.05
    # The interval of the difference: the seeds' spread around -5 points; the verdict table states it.
    low, high = byol.knn_top1.delta_interval
    assert -5.6 < low < -5.0 < high < -4.4
    assert f"-5.00 [{low:+.2f}, {high:+.2f}] (p " in to_markdown(result)


def test_a_small_but_significant_change_under_the_effect_size_is_not_flagged(tmp_path):
    base = make_sweep(tmp_path, "base", {("byol", 256): SEEDS})
    cand = make_sweep(tmp_path, "cand", {("byol", 256): shifted(SEEDS, knn=-0.009)})
    knn = compare_runs(load_run(base), load_run(cand)).groups[0].knn_top1
    assert knn.p_value < 0.05 and knn.delta_points == pytest.approx(-0.9)  # significant, under 1 point
    assert knn.verdict == "unchanged"
    smaller_effect = Tolerances(acc_points=0.5)  # the effect size, not the test, kept it unflagged
    assert compare_runs(load_run(base), load_run(cand), smaller_effect).groups[0].knn_top1.verdict == "regressed"


def test_one_seed_uses_the_tolerance(tmp_path):
    base = make_sweep(tmp_path, "base", {("byol", 256): SEEDS[:1]})
    cand = make_sweep(tmp_path, "cand", {("byol", 256): shifted(SEEDS[:1], knn=-0.02)})
    comparison = compare_runs(load_run(base), load_run(cand), Tolerances(acc_points=1.0))
    knn = comparison.groups[0].knn_top1
    assert knn.delta_interval is None and "(1 seed: no interval)" in to_markdown(comparison)
    assert knn.test == "tolerance" and knn.verdict == "regressed"
    knn = compare_runs(load_run(base), load_run(cand), Tolerances(acc_points=3.0)).groups[0].knn_top1
    assert knn.verdict == "unchanged"


def test_a_planted_slowdown_and_memory_growth_are_caught(tmp_path):
    base = make_sweep(tmp_path, "base", {("byol", 256): SEEDS})
    cand = make_sweep(tmp_path, "cand", {("byol", 256): shifted(SEEDS, speed=0.7, memory=1.3)})
    group = compare_runs(load_run(base), load_run(cand)).groups[0]
    assert group.images_per_s.verdict == "regressed" and group.images_per_s.ratio == pytest.approx(0.7)
    assert group.peak_memory_bytes.verdict == "regressed"
    assert group.knn_top1.verdict == "unchanged"


def test_unmatched_and_unfinished_trials_are_reported_not_crashed_on(tmp_path):
    base = make_sweep(tmp_path, "base", {("byol", 256): SEEDS, ("simsiam", 128): SEEDS})
    cand = make_sweep(tmp_path, "cand", {("byol", 256): SEEDS, ("simclr", 512): SEEDS}, fixed={"epochs": 8})
    run = load_run(cand)
    run.trials.loc[0, "status"] = "failed"
    result = compare_runs(load_run(base), run)
    assert [g["method"] for g in result.unmatched["baseline_only"]] == ["simsiam"]
    assert [g["method"] for g in result.unmatched["candidate_only"]] == ["simclr"]
    assert result.not_ok == [{"run": "cand", "trial_id": "method=byol,batch_size=256,seed=0", "status": "failed"}]
    assert result.protocol_changes == {"epochs": [4, 8]}
    run.trials["precision"] = "bf16"  # precision auto resolved otherwise on the candidate's machine
    assert compare_runs(load_run(base), run).protocol_changes == {"epochs": [4, 8], "precision": ["auto", "bf16"]}
    run.trials["validation"] = 0.1  # scored on a validation split held out of train, not on the test split
    assert compare_runs(load_run(base), run).protocol_changes["validation"] == [None, "0.1"]
    markdown = to_markdown(result)
    assert markdown.startswith("# Regression check: cand against base\n")
    lost_trial = "\n| method=byol, batch_size=256, momentum_schedule=cosine:0.99-1.0 | 3 → 2 | regressed |"
    assert lost_trial in markdown
    assert "only in the baseline" in markdown and "did not finish" in markdown and "epochs: 4 → 8" in markdown
    assert markdown.rstrip().endswith("Verdict: REGRESSED")


def test_settings_are_matched_by_the_axes_of_either_run(tmp_path):
    """A candidate that adds an lr and a subset axis: its lr 0.4 trials and its subset trials are settings of their
    own, not more seeds of the baseline's; only lr 0.06 on the whole split (subset null) is compared."""
    base = make_sweep(tmp_path, "base", {("byol", 256, ("lr", 0.06)): SEEDS})
    cand = make_sweep(tmp_path, "cand", {("byol", 256, ("lr", 0.06)): SEEDS,
                                         ("byol", 256, ("lr", 0.4)): shifted(SEEDS, -0.1),
                                         ("byol", 256, ("lr", 0.06), ("subset", 5000)): shifted(SEEDS, -0.1)},
                      axes=[*AXES, "lr", "subset"])
    result = compare_runs(load_run(base), load_run(cand))
    assert [(g.group["lr"], g.group["subset"], g.knn_top1.verdict) for g in result.groups] == [
        (0.06, "all", "unchanged")]
    assert sorted((g["lr"], g["subset"]) for g in result.unmatched["candidate_only"]) == [(0.06, 5000), (0.4, "all")]
    assert not result.regressed


def test_baseline_save_and_the_compare_command(tmp_path, capsys):
    sweep = make_sweep(tmp_path, "quick", {("byol", 256): SEEDS})
    baselines = tmp_path / "baselines"
    assert main(["baseline", "save", str(sweep), "--as", "v1", "--baselines-dir", str(baselines)]) == 0
    assert sorted(p.name for p in (baselines / "v1").iterdir()) == ["manifest.json", "trials.csv"]
    assert main(["baseline", "save", str(sweep), "--as", "v1", "--baselines-dir", str(baselines)]) == 2
    assert "exists already" in capsys.readouterr().err
    slower = make_sweep(tmp_path, "slower", {("byol", 256): shifted(SEEDS, speed=0.5)})
    assert main(["compare", "v1", str(slower), "--baselines-dir", str(baselines)]) == 1
    out = capsys.readouterr().out
    assert "| method=byol, batch_size=256, momentum_schedule=cosine:0.99-1.0 |" in out and "REGRESSED" in out
    assert json.loads((slower / "regression-vs-v1.json").read_text())["regressed"] is True
    report = (slower / "report.html").read_text()  # the candidate's report carries the verdicts
    assert "Against baseline v1 (sweep quick)" in report and "regressed" in report
    # A second baseline of the same sweep: its verdicts go beside the first's, named after it.
    assert main(["baseline", "save", str(sweep), "--as", "v2", "--baselines-dir", str(baselines)]) == 0
    assert main(["compare", "v2", str(slower), "--baselines-dir", str(baselines)]) == 1
    assert {path.name for path in slower.glob("regression-vs-*")} == {f"regression-vs-{name}.{suffix}" for name in
                                                                      ("v1", "v2") for suffix in ("json", "md")}
    report = (slower / "report.html").read_text()
    assert "Against baseline v1 (sweep quick)" in report and "Against baseline v2 (sweep quick)" in report
    assert main(["compare", "v1", str(sweep), "--baselines-dir", str(baselines)]) == 0


@pytest.mark.parametrize("damage", ["truncate", "drop-manifest", "garbage-manifest", "missing-columns"])
def test_a_corrupt_baseline_is_one_clear_error(tmp_path, capsys, damage):
    sweep = make_sweep(tmp_path, "quick", {("byol", 256): SEEDS})
    baseline = save_baseline(sweep, "v1", tmp_path / "baselines")
    if damage == "truncate":
        (baseline / "trials.csv").write_bytes(b"")
    elif damage == "drop-manifest":
        (baseline / "manifest.json").unlink()
    elif damage == "garbage-manifest":
        (baseline / "manifest.json").write_text("{not json")
    else:
        (baseline / "trials.csv").write_text("a,b\n1,2\n")
    assert main(["compare", str(baseline), str(sweep)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(baseline) in err


def test_an_unknown_baseline_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="neither a results folder nor a saved baseline"):
        load_run("no-such-baseline", tmp_path)


FASHION_MNIST = pytest.mark.skipif(find_fashion_mnist(data_root(None)) is None,
                                   reason="Fashion-MNIST is not installed (make data)")


@functools.lru_cache(maxsize=None)
def simsiam_trial(seed: int, stop_gradient: bool = True) -> dict:
    """A real short SimSiam trial on Fashion-MNIST (without stop-gradient it collapses), run once per
    session: the collapse test and the planted-regression test share them. One thread: the suite runs
    two test files at a time on two cores."""
    return run_trial(make_config(dict(
        method="simsiam", dataset="fashion-mnist", subset=2000, test_subset=500, batch_size=64, epochs=4, lr=0.2,
        probe_epochs=10, threads=1, seed=seed, stop_gradient=stop_gradient)), log=lambda line: None)


@FASHION_MNIST
def test_simsiam_without_stop_gradient_is_flagged_as_collapsed():
    collapsed, healthy = simsiam_trial(0, stop_gradient=False), simsiam_trial(0)
    assert collapsed.status == "collapsed" and healthy.status == "ok"
    assert collapsed.metrics.effective_rank < collapse_rank(128) < healthy.metrics.effective_rank
    assert collapsed.metrics.knn_top1 is not None  # a collapsed trial keeps its numbers for the tables


@FASHION_MNIST
def test_a_planted_regression_is_caught_and_a_rerun_with_other_seeds_is_not(tmp_path):
    """Real trials: SimSiam, then SimSiam with its stop-gradient removed by config (it collapses)."""
    def sweep(name, seeds, **changes):
        rows = []
        for seed in seeds:
            result = simsiam_trial(seed, **changes)
            cfg = make_config(result.config)
            rows.append(trial_row(f"method=simsiam,seed={seed}", resolved_config(cfg.to_dict()), result.status, result))
        write_tables(tmp_path / name, rows, [])
        write_json(tmp_path / name / "manifest.json", {"sweep": name, "axes": ["method", "seed"], "fixed": changes})
        return load_run(tmp_path / name)

    baseline = sweep("baseline", [0, 1])
    rerun = compare_runs(baseline, sweep("rerun", [2, 3])).groups[0]
    assert [getattr(rerun, m).verdict for m in ("status", "knn_top1", "linear_top1")] == ["unchanged"] * 3
    broken = compare_runs(baseline, sweep("no-stop-gradient", [0], stop_gradient=False))  # one collapse is enough
    assert broken.regressed and broken.groups[0].status.verdict == "regressed"
    assert broken.groups[0].status.candidate == {"collapsed": 1}
    assert broken.protocol_changes == {"stop_gradient": [None, False]}
