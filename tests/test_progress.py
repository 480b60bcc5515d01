import json

from byol_bench.on_ray.progress import SUMMARY_EVERY_S, SweepProgress
from byol_bench.trial.console import epoch_line, result_line
from byol_bench.trial.result import TrialResult

ROW = {"epoch": 2, "loss": 0.51234, "lr": 0.03, "momentum": 0.995, "images_per_s": 181.6, "epoch_time_s": 9.0}
RESULT = {"status": "ok", "config": {}, "metrics": {"knn_top1": 0.7123, "linear_top1": 0.8012, "images_per_s": 180.2, "pretrain_time_s": 61.4},
          "baselines": {"random_init_knn_top1": 0.609, "random_init_linear_top1": 0.767}}


def test_an_epoch_line_names_the_trial_and_shows_what_is_known():
    assert epoch_line("method=byol,seed=0", ROW, 5) == \
        "method=byol,seed=0: epoch 2/5 loss 0.5123 lr 0.0300 tau 0.9950 182 img/s"
    monitored = epoch_line("simclr", {**ROW, "momentum": None, "knn_top1": 0.6543}, 5)
    assert "tau" not in monitored and monitored.endswith("182 img/s knn 0.654")


def test_a_result_line_sets_accuracy_against_the_floors():
    assert result_line("byol", TrialResult.from_dict(RESULT)) == ("byol: ok, kNN top-1 0.712 (random init 0.609), linear top-1 0.801 (0.767), "
                                           "180 img/s, pretrained in 61 s")
    diverged = {**RESULT, "status": "diverged", "metrics": {**RESULT["metrics"], "knn_top1": None}}
    assert result_line("byol", TrialResult.from_dict(diverged)).startswith("byol: diverged, 180 img/s")


def knobs(method: str, epochs: int, **others) -> dict:
    return {"method": method, "epochs": epochs, "seed": 0, **others}


def test_the_summary_counts_trials_and_estimates_the_time_left_from_measured_epochs():
    now, lines = [0.0], []
    progress = SweepProgress({"a": knobs("byol", 4), "b": knobs("byol", 4), "c": knobs("simclr", 4)},
                             print_line=lines.append, clock=lambda: now[0])
    statuses = {"a": "running", "b": "pending", "c": "pending"}
    progress.tick(statuses)
    assert lines == []  # not due yet
    now[0] = SUMMARY_EVERY_S
    progress.tick(statuses)
    assert lines[-1] == "sweep: 0 done, 1 running, 2 pending, 0 failed of 3; 30s so far, time left not known yet"
    progress.result("a", ROW)  # a: 2 of 4 epochs
    assert lines[-1].startswith("a: epoch 2/4")
    progress.result("b", {**ROW, "epoch": 1})
    progress.result("c", {**ROW, "epoch": 3})  # first seen at epoch 3: resumed from a checkpoint
    assert lines[-2] == "c: resumed at epoch 3 from its checkpoint" and lines[-1].startswith("c: epoch 3/4")
    now[0] = 90.0
    progress.tick({"a": "running", "b": "failed", "c": "done"})
    # a: 2 epochs left at 9 s each (its epoch_time_s), less the 60 s since its last epoch: due already
    assert lines[-1] == "sweep: 1 done, 1 running, 0 pending, 1 failed of 3; 1m30s so far, about 0s left"
    progress.result("a", {**RESULT["metrics"], "status": "ok", "result_json": json.dumps(RESULT)})
    assert lines[-1].startswith("a: ok, kNN top-1 0.712") and progress.trials["a"].done == 4


def test_a_retried_trial_says_where_it_continues_and_what_it_runs_again():
    lines = []
    progress = SweepProgress({"a": knobs("byol", 4), "b": knobs("byol", 4)}, print_line=lines.append)
    for trial_id in ("a", "b"):
        progress.result(trial_id, {**ROW, "epoch": 1})
        progress.result(trial_id, ROW)
    progress.retry("a", 1)
    assert lines[-1] == "a: failed (failure 1); retrying it from its last checkpoint"
    progress.result("a", {**ROW, "note": "checkpoint x is truncated or damaged; falling back to the one before it"})
    assert lines[-3:-1] == ["a: checkpoint x is truncated or damaged; falling back to the one before it",
                            "a: resumed at epoch 2 from its checkpoint, 1 epoch(s) run again"]
    progress.retry("b", 1)
    progress.result("b", {**ROW, "epoch": 3})  # its checkpoint held every epoch seen
    assert lines[-2] == "b: resumed at epoch 3 from its checkpoint"
    progress.result("b", {**ROW, "epoch": 4})
    assert lines[-1].startswith("b: epoch 4/4")  # the next epoch, after the restart: no word of it again


def simulated_sweep(trials: dict[str, tuple[str, int, float]], overhead_s: float, slots: int):
    """A Tune-like run of ``trials`` (id -> method, epochs, seconds per epoch), ``slots`` at a time in order, each
    with ``overhead_s`` of set-up and evaluation, on a fake clock: (the estimates of time left after the first
    minute, each as (time, estimate), and when the sweep ended)."""
    now = [0.0]
    progress = SweepProgress({t: knobs(method, epochs) for t, (method, epochs, _) in trials.items()},
                             print_line=lambda line: None, clock=lambda: now[0])
    status = dict.fromkeys(trials, "pending")
    ends = {}  # running trial -> [(time, event), ...] still to come
    estimates = []
    while any(s in ("pending", "running") for s in status.values()):
        for trial_id in [t for t, s in status.items() if s == "pending"][: slots - len(ends)]:
            status[trial_id], (_, epochs, epoch_s) = "running", trials[trial_id]
            start = now[0] + overhead_s / 2  # set-up before the first epoch, evaluation after the last
            ends[trial_id] = [(start + (e + 1) * epoch_s, {"epoch": e + 1, "loss": 0.1, "lr": 0.1, "epoch_time_s": epoch_s})
                              for e in range(epochs)]
            ends[trial_id].append((start + epochs * epoch_s + overhead_s / 2,
                                   {"result_json": json.dumps(RESULT), "status": "ok"}))
        progress.tick(status)
        if now[0] >= 60:
            estimates.append((now[0], progress.time_left(status)))
        now[0] += 1.0
        for trial_id in list(ends):
            while ends[trial_id] and ends[trial_id][0][0] <= now[0]:
                progress.result(trial_id, ends[trial_id].pop(0)[1])
            if not ends[trial_id]:
                status[trial_id] = "done"
                del ends[trial_id]
    return estimates, now[0]


def test_the_time_left_holds_within_30_percent_over_trials_of_unequal_speed():
    # The demo's shape, in the sweep's run order (the methods in turn): BYOL's four trials 1.6x slower than the
    # others, and the last two trials BYOL's, each with set-up and evaluation beyond its epochs.
    speeds = {"byol": 30.0, "simclr": 20.0, "simsiam": 18.0}
    order = ["byol", "simclr", "simsiam"] * 2 + ["byol", "byol"]
    trials = {f"{method}{i}": (method, 4, speeds[method]) for i, method in enumerate(order)}
    estimates, end = simulated_sweep(trials, overhead_s=20.0, slots=2)
    for at, estimate in estimates:
        actual = end - at
        assert abs(estimate - actual) <= 0.3 * actual + 2, (at, estimate, actual)  # + 2: the 1 s ticks' rounding


def test_a_trial_not_yet_measured_is_timed_by_its_other_seeds_before_its_method():
    now = [0.0]
    progress = SweepProgress({"fp32": knobs("byol", 2, precision="fp32"), "bf16": knobs("byol", 2, precision="bf16"),
                              "bf16-seed1": knobs("byol", 2, precision="bf16", seed=1)},
                             print_line=lambda line: None, clock=lambda: now[0])
    progress.tick({"fp32": "running", "bf16": "running", "bf16-seed1": "pending"})
    now[0] = 10.0
    progress.result("fp32", {"epoch": 1, "loss": 0.1, "lr": 0.1, "epoch_time_s": 10.0})
    progress.result("bf16", {"epoch": 1, "loss": 0.1, "lr": 0.1, "epoch_time_s": 4.0})
    # bf16: 1 epoch left at 4 s; then bf16-seed1 on that slot: the set-up the two took beyond their first epoch
    # (0 and 6 s: 3 s) and 2 epochs at its setting's 4 s, not its method's 7 s; fp32 ends before, 10 s from now
    assert progress.time_left({"fp32": "running", "bf16": "running", "bf16-seed1": "pending"}) == 4 + 3 + 2 * 4


def test_a_result_line_names_each_floor_the_trial_is_under():
    under = {**RESULT, "floors": {**RESULT["baselines"], "raw_pixels_knn_top1": 0.760}}
    under.pop("baselines")
    line = result_line("simsiam", TrialResult.from_dict(under))
    assert line.endswith("; under its floor: raw-pixel kNN (0.712 < 0.760)")
    assert "under" not in result_line("byol", TrialResult.from_dict(RESULT))
