"""Tuned comparisons on a real Ray cluster: the search never reads the test split, and a stopped tune resumes."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torchvision.transforms.functional import to_pil_image

from byol_bench.cli import main
from byol_bench.data.datasets import make_synthetic
from byol_bench.on_ray import failpoints
from byol_bench.on_ray.tuning import run_search
from byol_bench.plan.tune_file import load_tune
from conftest import TINY

# TINY's trial, one search trial at a time and in fp32 on one thread: the same search twice gives the same numbers.
TRIAL = {**{key: value for key, value in TINY.items() if key not in ("test_subset", "dataset", "image_size")},
         "precision": "fp32", "batch_size": 32}


def write_tune(folder: Path, trial: dict, search: dict) -> Path:
    path = folder / f"{folder.name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny-tune", "trial": {**TRIAL, **trial}, "axes": {"method": ["simclr"]}, "resources": {"cpu": 1},
        "max_concurrent": 1, "search": {"space": {"simclr": {"lr": {"loguniform": [0.02, 2.0]},
                                                             "temperature": {"choice": [0.1, 0.5]}}},
                                        "algorithm": "random", "validation": 0.25, **search}}))
    return path


def image_tree(root: Path, images, labels) -> None:
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"class{int(label)}"
        folder.mkdir(parents=True, exist_ok=True)
        to_pil_image(image).save(folder / f"{index}.png")


def test_the_search_never_reads_the_test_split(tmp_path, ray_cluster):
    """Two image trees with the same train/ and the same val/ images (the test split), the second's val/ labels
    shuffled: the two searches sample, score, stop and choose exactly alike."""
    train, train_labels = make_synthetic(200, seed=0, image_size=16)
    test, test_labels = make_synthetic(100, seed=1, image_size=16)
    shuffled = test_labels[torch.randperm(len(test_labels), generator=torch.Generator().manual_seed(5))]
    assert (shuffled != test_labels).float().mean() > 0.5
    rows = []
    for name, labels in (("clean", test_labels), ("poisoned", shuffled)):
        image_tree(tmp_path / name / "data" / "train", train, train_labels)
        image_tree(tmp_path / name / "data" / "val", test, labels)
        search = load_tune(write_tune(tmp_path / name, {"dataset": "imagefolder", "image_size": 16, "subset": None,
                                                         "data_dir": str(tmp_path / name / "data")},
                                      {"budget": {"trials": 3}}))
        found, _ = run_search(search, tmp_path / name / "results")
        assert len(found) == 3
        rows.append(pd.DataFrame(found).drop(columns=["time_s"]))
    assert (rows[1]["status"] == "ok").all()
    pd.testing.assert_frame_equal(rows[0], rows[1])  # the sampled values, validation scores, epochs, stops


def _read_until(process: subprocess.Popen, seen: str, deadline: float) -> str:
    """The process's output up to and including the first line holding ``seen``."""
    output = ""
    while seen not in output:
        line = process.stdout.readline()
        if not line or time.time() > deadline:
            process.kill()
            pytest.fail(f"never saw {seen!r}:\n{output[-3000:]}")
        output += line
    return output


def test_a_stopped_tune_resumes_without_rerunning_finished_search_trials(tmp_path, capsys, monkeypatch, ray_cluster):
    """Ctrl-C while the second search trial is part-way (paused by a failpoint after its first epoch): the tune
    stops (exit 130); --resume continues the second from its checkpoint, never reruns the first, finishes the
    search and runs the final trial into the same folder, whose report has the search section. While the search
    runs, a second tune there is refused. Both tunes join the test session's cluster (--address) and hand it the
    failpoint."""
    monkeypatch.setenv(failpoints.ENV, json.dumps([{"at": "after_epoch", "action": "pause", "trial": "simclr search #2",
                                                    "epoch": 1, "first_run": True}]))
    path = write_tune(tmp_path, {"dataset": "synthetic", "image_size": 16, "subset": 256, "test_subset": 100,
                                 "epochs": 3},
                      {"budget": {"trials": 2}, "scheduler": {"grace_period": 3}, "final_seeds": [0],
                       "run_defaults": False})
    results, script = tmp_path / "results", Path(sys.executable).with_name("byol-bench")
    tune = [str(script), "tune", str(path), "--results-dir", str(results),
            "--address", ray_cluster.get_runtime_context().gcs_address]
    first = subprocess.Popen(tune, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _read_until(first, "simclr search #2: epoch 1/3", time.time() + 240)  # one at a time: #1 has finished
    for flags in ([], ["--resume"]):
        assert main([*tune[1:], *flags]) == 2
        assert f"is in use by a running sweep (pid {first.pid} on " in capsys.readouterr().err
    time.sleep(2.5)  # past the next save of Tune's experiment state (every 2 s), which records that checkpoint
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 130 and "--resume" in output, output
    first_trial = results / "tiny-tune" / "search" / "simclr" / "simclr-001" / "result.json"
    recorded = first_trial.read_text()
    resumed = subprocess.run([*tune, "--resume"], capture_output=True, text=True, timeout=300)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "simclr search #1: epoch" not in output  # the finished trial was not rerun...
    assert "simclr search #2: resumed at epoch" in output, output[-3000:]  # ...and the stopped one went on from its checkpoint
    search = pd.read_parquet(results / "tiny-tune" / "search.parquet").set_index("trial")
    assert list(search.index) == [1, 2] and (search["epochs"] == 3).all()
    assert first_trial.read_text() == recorded
    trials = pd.read_parquet(results / "tiny-tune" / "trials.parquet")
    assert len(trials) == 1 and (trials["status"] == "ok").all()
    assert "<h2>Search</h2>" in (results / "tiny-tune" / "report.html").read_text()
