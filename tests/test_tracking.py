"""Experiment tracking (``sweep --track``): one small sweep logged to MLflow (its default SQLite store) and
TensorBoard, read back with their own readers; a resumed trial that keeps its MLflow run; and the bad
inputs, each one line, exit 2, nothing written and no Ray started."""

import http.server
import json
import sys
import threading

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from byol_bench.cli import main
from byol_bench.on_ray import sweep as tune_runner
from byol_bench.plan.sweep_file import expand, load_sweep
from test_bad_inputs import a_file_as_folder, snapshot, sweep_file
from test_sweep import write_sweep

EPOCHS = 2  # test_sweep's TINY_TRIAL
EPOCH_STEPS = list(range(1, EPOCHS + 1))  # Tune's training_iteration; the final result comes one step later


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, ray_cluster):
    """Two tiny trials (a kNN every epoch too), tracked by both MLflow and TensorBoard: their results folder,
    the trials' planned configs by id, and their rows in trials.parquet."""
    tmp = tmp_path_factory.mktemp("tracked")
    path = write_sweep(tmp, "tracked", {"method": ["byol", "simsiam"], "batch_size": [64]}, trial={"knn_monitor_every": 1})
    assert main(["sweep", str(path), "--results-dir", str(tmp / "results"), "--track", "mlflow", "--track", "tensorboard"]) == 0
    folder = tmp / "results" / "tracked"
    planned = {p.trial_id: p.resolved for p in expand(load_sweep(path))}
    return folder, planned, pd.read_parquet(folder / "trials.parquet").set_index("trial_id")


def mlflow_runs(folder):
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(folder.name)  # named after the sweep
    return client, client.search_runs([experiment.experiment_id])


def steps(client, run, key):
    return [(metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, key)]


def test_mlflow_holds_one_run_per_trial_with_its_knobs_history_and_final_metrics(tracked):
    folder, planned, trials = tracked
    client, runs = mlflow_runs(folder)
    assert sorted(run.data.params["trial_id"] for run in runs) == sorted(planned)
    for run in runs:
        trial_id = run.data.params["trial_id"]
        row = trials.loc[trial_id]
        assert run.info.status == "FINISHED" and run.info.run_name == trial_id
        assert run.data.params == {"trial_id": trial_id, **{key: str(value) for key, value in planned[trial_id].items()}}
        assert [step for step, _ in steps(client, run, "loss")] == EPOCH_STEPS
        assert [step for step, _ in steps(client, run, "lr")] == EPOCH_STEPS
        assert len(steps(client, run, "momentum")) == (EPOCHS if row["method"] == "byol" else 0)  # BYOL's EMA alone
        assert [step for step, _ in steps(client, run, "knn_top1")] == [*EPOCH_STEPS, EPOCHS + 1]  # and the final one
        metrics = run.data.metrics  # the latest value of each: the final result
        for key in ("knn_top1", "linear_top1", "images_per_s", "effective_rank", "peak_memory_bytes"):
            assert metrics[key] == pytest.approx(row[key]), key
        assert not {key for key in metrics if key.startswith("config/")} and "trial_id" not in metrics


def test_tensorboard_event_files_hold_each_trials_history(tracked):
    folder, planned, trials = tracked
    seen = set()
    for trial_folder in (params.parent for params in (folder / "tune").glob("*/params.json")):
        trial_id = json.loads((trial_folder / "params.json").read_text())["trial_id"]
        events = EventAccumulator(str(trial_folder))
        events.Reload()
        scalars = {tag.removeprefix("ray/tune/"): events.Scalars(tag) for tag in events.Tags()["scalars"]}
        assert [event.step for event in scalars["loss"]] == EPOCH_STEPS
        assert [event.step for event in scalars["lr"]] == EPOCH_STEPS
        assert [event.step for event in scalars["knn_top1"]] == [*EPOCH_STEPS, EPOCHS + 1]
        assert scalars["linear_top1"][-1].value == pytest.approx(trials.loc[trial_id, "linear_top1"])
        seen.add(trial_id)
    assert seen == set(planned)


def test_a_resumed_trial_continues_its_mlflow_run(tmp_path, ray_cluster, capsys):
    """A trial that failed (a corrupt image), resumed once the image is mended, ends as one finished run."""
    from torchvision.transforms.functional import to_pil_image

    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        for i in range(32):
            to_pil_image(torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)).save(images / label / f"{i}.png")
    broken = images / "a" / "broken.png"
    broken.write_bytes(b"not a png at all")
    path = write_sweep(tmp_path, "mended", {"seed": [0]}, max_failures=0,
                       trial={"dataset": "imagefolder", "data_dir": str(images), "image_size": 16, "subset": None,
                              "test_subset": None, "batch_size": 16, "epochs": EPOCHS})
    results = str(tmp_path / "results")
    assert main(["sweep", str(path), "--results-dir", results, "--track", "mlflow"]) == 1
    database = tmp_path / "results" / "mended" / "mlflow.db"
    assert f"MLflow: experiment 'mended' in sqlite:///{database}" in capsys.readouterr().out
    client, runs = mlflow_runs(tmp_path / "results" / "mended")
    assert [run.info.status for run in runs] == ["FAILED"]
    to_pil_image(torch.zeros(3, 16, 16, dtype=torch.uint8)).save(broken, format="png")
    assert main(["sweep", str(path), "--results-dir", results, "--resume"]) == 0
    client, runs = mlflow_runs(tmp_path / "results" / "mended")
    assert [run.info.status for run in runs] == ["FINISHED"]
    assert [step for step, _ in steps(client, runs[0], "loss")] == EPOCH_STEPS


def given(*flags):
    return lambda tmp, monkeypatch: sweep_file(tmp, *flags)


def without(module, *flags):
    """A case whose flags need ``module``, as if it were not installed (find_spec takes None in sys.modules
    for absent)."""
    def build(tmp, monkeypatch):
        monkeypatch.setitem(sys.modules, module, None)
        return sweep_file(tmp, *flags)
    return build


CASES = {
    "unknown tracker": (given("--track", "mlfow"), "unknown tracker 'mlfow' (did you mean 'mlflow'?); choose one of: mlflow, tensorboard, wandb"),
    "mlflow not installed": (without("mlflow", "--track", "mlflow"),
                             "--track mlflow needs mlflow (not installed here); pip install 'byol-bench[mlflow]'"),
    "tensorboardX not installed": (without("tensorboardX", "--track", "tensorboard"),
                                   "--track tensorboard needs tensorboardX (not installed here); pip install 'byol-bench[tensorboard]'"),
    "wandb not installed": (without("wandb", "--track", "mlflow", "--track", "wandb"),
                            "--track wandb needs wandb (not installed here); pip install 'byol-bench[wandb]'"),
    "no MLflow server": (given("--track", "mlflow", "--tracking-uri", "http://127.0.0.1:1"),
                         "--tracking-uri http://127.0.0.1:1: no MLflow server answers there"),
    "server URI without host": (given("--track", "mlflow", "--tracking-uri", "http:///x"), "--tracking-uri http:///x: no host"),
    "unknown URI scheme": (given("--track", "mlflow", "--tracking-uri", "sqllite:///mlflow.db"),
                           "unknown scheme 'sqllite' (did you mean 'sqlite'?)"),
    "SQLite URI without a path": (given("--track", "mlflow", "--tracking-uri", "sqlite://"), "a SQLite store is sqlite:///"),
    "SQLite folder cannot be made": (lambda t, m: sweep_file(t, "--track", "mlflow", "--tracking-uri",
                                                             f"sqlite:///{a_file_as_folder(t)}/mlflow.db"),
                                     "cannot be written (Not a directory"),
    "tracking URI without MLflow": (given("--track", "tensorboard", "--tracking-uri", "sqlite:///mlflow.db"),
                                    "is where MLflow logs; add --track mlflow"),
    "tracking a resumed sweep": (given("--resume", "--track", "mlflow"), "apply to a new sweep"),
}


def assert_refused(argv, message, tmp, capsys, monkeypatch):
    """``argv`` ends in one line holding ``message``, exit 2, with nothing written and no Ray started."""
    monkeypatch.setattr(tune_runner, "start_ray", lambda address: pytest.fail("Ray was started"))
    before = snapshot(tmp)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and err.startswith("byol-bench: error: ") and "Traceback" not in err
    assert snapshot(tmp) == before


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_tracking_input_is_one_line_exit_2_and_nothing_runs(case, tmp_path, capsys, monkeypatch):
    build, message = CASES[case]
    assert_refused(build(tmp_path, monkeypatch), message, tmp_path, capsys, monkeypatch)


class NotMLflow(http.server.BaseHTTPRequestHandler):
    """A web server that answers every request with 501, and quietly (the test reads stderr)."""
    def log_message(self, *args):
        pass


def test_a_web_server_that_is_not_mlflow_is_refused(tmp_path, capsys, monkeypatch):
    """Whatever answers at the URI must be MLflow: a proxy or another web server answers too."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotMLflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        assert_refused(sweep_file(tmp_path, "--track", "mlflow", "--tracking-uri", uri),
                       f"--tracking-uri {uri}: what answers there is not an MLflow server (HTTP 501 for /health)",
                       tmp_path, capsys, monkeypatch)
    finally:
        server.shutdown()
