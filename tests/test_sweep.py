import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from byol_bench.cli import main
from byol_bench.sweep import expand, load_sweep
from byol_bench.tune_runner import run_sweep
from conftest import TINY

PRESETS = Path(__file__).resolve().parent.parent / "benchmarks" / "sweeps"
# conftest's TINY trial, with the sweep's batch sizes and Ray's threads (one per CPU) left to each test.
TINY_TRIAL = {key: value for key, value in TINY.items() if key not in ("batch_size", "threads")}


def write_sweep(folder: Path, name: str, axes: dict, **extra) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "trial": {**TINY_TRIAL, **extra.pop("trial", {})}, "axes": axes,
                                    "resources": {"cpu": 1}, **extra}))
    return path


def test_method_specific_axes_cross_only_the_methods_that_read_them(tmp_path):
    path = write_sweep(tmp_path, "grid", {"method": ["byol", "simclr", "simsiam"], "batch_size": [32, 64],
                                          "momentum_schedule": ["constant:0.99", "cosine:0.99-1.0"],
                                          "temperature": [0.1, 0.5], "seed": [0, 1]})
    planned = expand(load_sweep(path))
    per_method = pd.Series([p.knobs["method"] for p in planned]).value_counts().to_dict()
    assert per_method == {"byol": 2 * 2 * 2, "simclr": 2 * 2 * 2, "simsiam": 2 * 2}
    assert len({p.trial_id for p in planned}) == len(planned)
    simclr = [p for p in planned if p.knobs["method"] == "simclr"][0]
    assert "momentum_schedule" not in simclr.knobs and "momentum_schedule" not in simclr.trial_id


@pytest.mark.parametrize("preset, trials", [
    ("quick", 4 + 2 + 2),  # BYOL x 2 schedules x 2 batch sizes, SimCLR and SimSiam x 2 batch sizes
    ("cifar10-resnet18", 3 * 2 * 3),  # 3 methods x 2 batch sizes x 3 seeds
    ("imagenette-resnet18", 6),  # BYOL, SimCLR, SimSiam, VICReg, DINO, SwAV
    ("methods-cifar10", 10),  # every method once
    ("imagenet100-resnet18", 3),
    ("byol-ablation", 4 * 7 * 2),  # 4 target decay rates x 7 batch sizes x 2 seeds
    ("fashion-mnist-resnet18", 3 * 3),  # 3 methods x 3 seeds
    ("gpu-check", 3),  # one trial per method
    ("quick-precision", 8 * 2 * 3),  # the quick preset's 8 settings x fp32, bf16 x 3 seeds
])
def test_presets_dry_run_to_the_expected_trial_count(preset, trials, capsys):
    assert main(["sweep", str(PRESETS / f"{preset}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{trials} trials" in out
    assert len(expand(load_sweep(PRESETS / f"{preset}.yaml"))) == trials


def test_a_sweep_writes_both_tables_and_a_manifest(tmp_path, ray_cluster, capsys):
    path = write_sweep(tmp_path, "tiny", {"method": ["byol", "simsiam"], "batch_size": [64],
                                          "momentum_schedule": ["constant:0.99", "cosine:0.99-1.0"], "seed": [0]})
    assert run_sweep(load_sweep(path), tmp_path / "results") == 0
    assert "floors (random-init backbone, raw pixels) of 1 setting(s), once for all 3 trials" in capsys.readouterr().err
    folder = tmp_path / "results" / "tiny"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert trials["random_init_knn_top1"].nunique() == trials["raw_pixels_knn_top1"].nunique() == 1
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(trials) == 3 and set(trials["status"]) == {"ok"}
    assert sorted(trials["momentum_schedule"].dropna()) == ["constant:0.99", "cosine:0.99-1.0"]
    assert trials.loc[trials.method == "simsiam", "momentum_schedule"].isna().all()
    for column in ("method", "batch_size", "seed", "knn_top1", "linear_top1", "images_per_s", "peak_memory_bytes",
                   "random_init_knn_top1", "raw_pixels_knn_top1", "error", "git_revision"):
        assert column in trials.columns
    assert trials["knn_top1"].between(0, 1).all()
    assert len(epochs) == 3 * 2 and set(epochs["trial_id"]) == set(trials["trial_id"])
    assert pd.read_csv(folder / "trials.csv").shape[0] == 3
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["grid"]) == 3 and manifest["finished"] and "CPU" in manifest["cluster_resources"]
    assert manifest["sweep_file"] == path.read_text() and manifest["versions"]["ray"]
    assert len(list((tmp_path / "results" / "history" / "runs").glob("*.parquet"))) == 1  # appended to the history


def test_a_failing_trial_is_recorded_while_the_others_finish(tmp_path, ray_cluster, capsys):
    good, corrupt = tmp_path / "good", tmp_path / "corrupt"
    from torchvision.transforms.functional import to_pil_image
    import torch

    for tree in (good, corrupt):
        for label in ("a", "b"):
            (tree / label).mkdir(parents=True)
            for i in range(40):
                to_pil_image(torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)).save(tree / label / f"{i}.png")
    (corrupt / "a" / "broken.png").write_bytes(b"not a png at all")
    path = write_sweep(tmp_path, "faulty", {"data_dir": [str(good), str(corrupt)]},
                       trial={"dataset": "imagefolder", "image_size": 16, "subset": None, "test_subset": None,
                              "batch_size": 16, "epochs": 1}, max_failures=0)
    assert run_sweep(load_sweep(path), tmp_path / "results") == 1
    trials = pd.read_parquet(tmp_path / "results" / "faulty" / "trials.parquet").set_index("data_dir")
    assert trials.loc[str(good), "status"] == "ok"
    assert trials.loc[str(corrupt), "status"] == "failed"
    assert "broken.png" in trials.loc[str(corrupt), "error"] or "identify" in trials.loc[str(corrupt), "error"]
    assert "failed" in capsys.readouterr().out


def _bench(*args, **kwargs):
    script = os.path.join(os.path.dirname(sys.executable), "byol-bench")
    return subprocess.Popen([script, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _result_lines(trial: Path) -> list[str]:
    """The complete lines of a trial folder's result.json; none before Tune writes it, which can be after the
    trial's first checkpoint appears."""
    path = trial / "result.json"
    return path.read_text(errors="replace").split("\n")[:-1] if path.exists() else []


def _finished_results(experiment: Path) -> dict:
    """trial_id -> its final result JSON, for the trials Tune has recorded as finished."""
    return {json.loads(line)["config"]["trial_id"]: json.loads(line)["result_json"]
            for trial in experiment.glob("*") for line in _result_lines(trial) if '"result_json"' in line}


def _mid_run(experiment: Path) -> list:
    """Trial folders with a checkpoint and a recorded result, but no final one: trials stopped part-way."""
    return [trial for trial in {path.parent for path in experiment.glob("*/checkpoint_*")}
            if (lines := _result_lines(trial)) and not any('"result_json"' in line for line in lines)]


def _stop_when_part_way(process: subprocess.Popen, experiment: Path, finished: int, stop) -> tuple[dict, str]:
    """Wait until ``finished`` trials have finished and the next has checkpointed part-way, then ``stop(process)``;
    returns the finished trials' results as the stopped sweep left them, and its console output."""
    deadline = time.time() + 300
    while not (len(_finished_results(experiment)) == finished and _mid_run(experiment)):
        if time.time() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"the sweep never reached the point to stop it:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.2)
    time.sleep(2.5)  # past the next save of Tune's experiment state (every 2 s), which records that checkpoint
    stop(process)
    output, _ = process.communicate(timeout=120)
    done = _finished_results(experiment)
    assert len(done) == finished, output
    return done, output


def _kill_everything(process: subprocess.Popen) -> None:
    """The driver and everything it started die at once, as on a crashed or rebooted machine."""
    os.killpg(process.pid, signal.SIGKILL)


def test_an_interrupted_sweep_resumes_only_its_missing_trials(tmp_path):
    """Killed outright (SIGKILL) with one trial done and one part-way, resumed, interrupted again by Ctrl-C
    with two done and the third part-way, resumed again: every part-way trial continues from its checkpoint,
    no finished trial is rerun, and the three trials end as three rows."""
    path = write_sweep(tmp_path, "resumable", {"method": ["simclr"], "seed": [0, 1, 2]}, max_concurrent=1,
                       trial={"epochs": 8, "subset": 512, "batch_size": 32})
    results, experiment = tmp_path / "results", tmp_path / "results" / "resumable" / "tune"
    sweep = ["sweep", str(path), "--results-dir", str(results)]
    done, _ = _stop_when_part_way(_bench(*sweep, start_new_session=True), experiment, 1, _kill_everything)
    resumed = _bench(*sweep, "--resume")
    done_again, output = _stop_when_part_way(resumed, experiment, 2, lambda process: process.send_signal(signal.SIGINT))
    assert resumed.returncode == 130 and "--resume" in output  # Ctrl-C: exit 130, saying how to go on
    assert "resumed at epoch" in output
    assert done_again.items() >= done.items()  # the first run's finished trial kept its result
    last = _bench(*sweep, "--resume")
    output, _ = last.communicate(timeout=300)
    assert last.returncode == 0, output
    assert "resumed at epoch" in output  # the part-way trial continued from its checkpoint
    trials = pd.read_parquet(results / "resumable" / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    for trial_id, result_json in done_again.items():  # a finished trial kept its result: it was not rerun
        assert trials.set_index("trial_id").loc[trial_id, "time"] == json.loads(result_json)["provenance"]["time"]
