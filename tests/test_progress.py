import json

from byol_bench.progress import SUMMARY_EVERY_S, SweepProgress, epoch_line, result_line

ROW = {"epoch": 2, "loss": 0.51234, "lr": 0.03, "momentum": 0.995, "images_per_s": 181.6, "epoch_time_s": 9.0}
RESULT = {"status": "ok", "metrics": {"knn_top1": 0.7123, "linear_top1": 0.8012, "images_per_s": 180.2, "pretrain_time_s": 61.4},
          "baselines": {"random_init_knn_top1": 0.609, "random_init_linear_top1": 0.767}}


def test_an_epoch_line_names_the_trial_and_shows_what_is_known():
    assert epoch_line("method=byol,seed=0", ROW, 5) == \
        "method=byol,seed=0: epoch 2/5 loss 0.5123 lr 0.0300 tau 0.9950 182 img/s"
    monitored = epoch_line("simclr", {**ROW, "momentum": None, "knn_top1": 0.6543}, 5)
    assert "tau" not in monitored and monitored.endswith("182 img/s knn 0.654")


def test_a_result_line_sets_accuracy_against_the_floors():
    assert result_line("byol", RESULT) == ("byol: ok, kNN top-1 0.712 (random init 0.609), linear top-1 0.801 (0.767), "
                                           "180 img/s, pretrained in 61 s")
    diverged = {**RESULT, "status": "diverged", "metrics": {**RESULT["metrics"], "knn_top1": None}}
    assert result_line("byol", diverged).startswith("byol: diverged, 180 img/s")


def test_the_summary_counts_trials_and_estimates_the_time_left_from_epochs_done():
    now, lines = [0.0], []
    progress = SweepProgress({"a": 4, "b": 4, "c": 4}, print_line=lines.append, clock=lambda: now[0])
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
    # 6 of 12 epochs in 90 s: the other 6 take about 90 s
    assert lines[-1] == "sweep: 1 done, 1 running, 0 pending, 1 failed of 3; 1m30s so far, about 1m30s left"
    progress.result("a", {**RESULT["metrics"], "status": "ok", "result_json": json.dumps(RESULT)})
    assert lines[-1].startswith("a: ok, kNN top-1 0.712") and progress.epochs_done["a"] == 4
