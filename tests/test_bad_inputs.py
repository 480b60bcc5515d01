"""Bad input, table-driven: each case is one clear line naming the input and the fix, exit code 2,
no traceback, and nothing written, lost or overwritten."""

import gzip
from pathlib import Path

import pytest
import torch
import yaml

from byol_bench.cli import main
from conftest import TINY

TINY_FLAGS = [arg for key, value in TINY.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
SWEEP = {"name": "s", "trial": {k: v for k, v in TINY.items() if k != "threads"}, "axes": {"method": ["byol"]}}


def train(tmp: Path, *flags):
    return ["train", *TINY_FLAGS, *flags, "--out", str(tmp / "out" / "trial.json")]


def config_file(tmp: Path, text: str):
    (tmp / "trial.yaml").write_text(text)
    return ["train", "--config", str(tmp / "trial.yaml"), "--out", str(tmp / "trial.json")]


def sweep_file(tmp: Path, *flags, **changes):
    spec = {**SWEEP, **changes}
    (tmp / "s.yaml").write_text(yaml.safe_dump(spec) if isinstance(spec, dict) else spec)
    return ["sweep", str(tmp / "s.yaml"), "--results-dir", str(tmp / "results"), *flags]


def corrupt_fashion_mnist(tmp: Path, monkeypatch):
    folder = tmp / "fmnist"
    folder.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (folder / f"{stem}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))  # a header cut short
    monkeypatch.setenv("BYOL_BENCH_DATA", str(folder))
    return ["train", "--dataset", "fashion-mnist", "--subset", "100", "--batch-size", "50", "--out", str(tmp / "t.json")]


def mismatched_class_folders(tmp: Path):
    from torchvision.transforms.functional import to_pil_image

    for split, classes in (("train", ("cat", "dog")), ("val", ("cat", "emu"))):
        for label in classes:
            (tmp / "tree" / split / label).mkdir(parents=True)
            to_pil_image(torch.zeros(3, 8, 8, dtype=torch.uint8)).save(tmp / "tree" / split / label / "0.png")
    return ["train", "--dataset", "imagefolder", "--data-dir", str(tmp / "tree"), "--batch-size", "1",
            "--out", str(tmp / "t.json")]


def earlier_results(tmp: Path, *flags):
    (tmp / "results" / "s").mkdir(parents=True)
    (tmp / "results" / "s" / "trials.parquet").write_text("an earlier sweep's table")
    return sweep_file(tmp, *flags)


def cut_tune_state(tmp: Path):
    (tmp / "results" / "s" / "tune").mkdir(parents=True)
    (tmp / "results" / "s" / "tune" / "experiment_state-2026-12-03_06-04-30.json").write_text('{"trial_data": [["{\\"trial_id')
    return sweep_file(tmp, "--resume")


def a_file_as_folder(tmp: Path):
    (tmp / "plain-file").write_text("not a folder")
    return tmp / "plain-file" / "below"


CASES = {
    "unknown method": (lambda t, m: train(t, "--method", "byl"), "unknown method 'byl' (did you mean 'byol'?)"),
    "another method's knob": (lambda t, m: train(t, "--method", "simclr", "--momentum-schedule", "constant:0.99"),
                              "momentum_schedule: method simclr does not read it (read by byol, moco, dino"),  # and plug-ins
    "memory bank larger than the data": (lambda t, m: train(t, "--method", "moco", "--memory-bank-size", "300"),
                                         "memory_bank_size 300 is larger than the 256 pretraining images"),
    "default memory bank larger than the data": (lambda t, m: train(t, "--method", "nnclr"),
                                                 "memory_bank_size 4096 is larger than the 256 pretraining images"),
    "local crop larger than the global one": (lambda t, m: train(t, "--method", "dino", "--local-crop-size", "48"),
                                              "local_crop_size 48 is larger than the 16 px global crops; give at most 16"),
    "views larger than the images": (lambda t, m: train(t, "--view-size", "20"),
                                     "view_size 20 is larger than the 16 px images; give at most 16 (null: 16)"),
    "zero local crop size": (lambda t, m: train(t, "--method", "swav", "--local-crop-size", "0"),
                             "local_crop_size must be above 0, got 0"),
    "negative local crops": (lambda t, m: train(t, "--method", "dino", "--local-crops", "-2"),
                             "local_crops must be at least 0, got -2"),
    "projection head depth": (lambda t, m: train(t, "--method", "vicreg", "--projection-layers", "4"),
                              "projection_layers 4 is not valid; give 3 (the paper's head) or 2"),
    "unknown data set": (lambda t, m: train(t, "--dataset", "fashion"), "unknown data set 'fashion'"),
    "label fraction above 1": (lambda t, m: train(t, "--probe-label-fractions", "0.1,10"),
                               "probe_label_fractions: 10 is not a fraction of the labels; give each in (0, 1]"),
    "label fraction of zero": (lambda t, m: config_file(t, "probe_label_fractions: [0.0, 0.1]\n"),
                               "probe_label_fractions: 0 is not a fraction of the labels"),
    "label fraction not a number": (lambda t, m: train(t, "--probe-label-fractions", "1%"),
                                    "probe_label_fractions: '1%' is not valid; give a number or several"),
    "unknown eval data set": (lambda t, m: train(t, "--eval-datasets", "cifar1O"),
                              "eval_datasets: 'cifar1O' is neither a data set (did you mean 'cifar10'?) nor a folder"),
    "eval data set without classes": (lambda t, m: train(t, "--eval-datasets", str(t)),
                                      "holds no class folders, so its classes cannot be read"),
    "online probe without labels": (lambda t, m: train(t, "--dataset", "stl10", "--online-probe", "true"),
                                    "online_probe: stl10 pretrains on unlabeled images"),
    "unknown backbone": (lambda t, m: train(t, "--backbone", "resnet19"), "unknown backbone 'resnet19'"),
    "zero batch size": (lambda t, m: train(t, "--batch-size", "0"), "batch_size must be above 0, got 0"),
    "negative batch size": (lambda t, m: train(t, "--batch-size", "-4"), "batch_size must be above 0, got -4"),
    "zero epochs": (lambda t, m: train(t, "--epochs", "0"), "epochs 0 trains nothing; give epochs above 0, or backbone_weights"),
    "wrong type": (lambda t, m: train(t, "--epochs", "two"), "epochs: 'two' is not valid; give a whole number"),
    "batch larger than subset": (lambda t, m: train(t, "--batch-size", "512"), "global batch 512 (batch_size x workers) is larger than subset 256"),
    "workers outside a sweep": (lambda t, m: train(t, "--workers", "2"), "workers 2: this process group has 1; run a trial with workers N under 'torchrun"),
    "gpus and workers both": (lambda t, m: sweep_file(t, resources={"gpu": 2}, trial={**SWEEP["trial"], "workers": 2}),
                              "resources.gpu 2 already means 2 DDP workers of one GPU each"),
    "fewer test images than workers": (lambda t, m: train(t, "--workers", "4", "--batch-size", "16", "--test-subset", "3"),
                                       "test_subset 3 is smaller than workers 4"),
    "ddp ranks on gpu fractions": (lambda t, m: sweep_file(t, resources={"gpu": 0.5}, trial={**SWEEP["trial"], "workers": 2}),
                                   "2 DDP workers cannot share fractions of GPUs"),
    "subset larger than data": (lambda t, m: train(t, "--subset", "100000"), "subset 100000 is larger than synthetic's 2000 images"),
    "missing data dir": (lambda t, m: train(t, "--data-dir", "/nonexistent/data"), "--data-dir /nonexistent/data does not exist"),
    "bad momentum schedule": (lambda t, m: train(t, "--momentum-schedule", "cosine:0.99"), "momentum_schedule 'cosine:0.99' is not valid"),
    "unknown device": (lambda t, m: train(t, "--device", "tpu"), "device 'tpu' is not valid"),
    "unknown flag": (lambda t, m: train(t, "--no-such-flag", "1"), "unrecognized arguments"),
    "output is a folder": (lambda t, m: ["train", *TINY_FLAGS, "--out", str(t)], "is a folder"),
    "unwritable output": (lambda t, m: ["train", *TINY_FLAGS, "--out", str(a_file_as_folder(t) / "x.json")], "cannot be written (Not a directory"),
    "YAML syntax error": (lambda t, m: config_file(t, "method: byol\n  epochs: [1\n"), "is not valid YAML at line 2"),
    "unknown config key": (lambda t, m: config_file(t, "metod: byol\n"), "unknown key 'metod' (did you mean 'method'?)"),
    "config wrong type": (lambda t, m: config_file(t, "epochs: four\n"), "epochs: 'four' is not valid; give a whole number"),
    "config not a mapping": (lambda t, m: config_file(t, "- byol\n"), "must hold a mapping"),
    "corrupt data": (corrupt_fashion_mnist, "unreadable or corrupt"),
    "image size of a fixed-size data set": (lambda t, m: train(t, "--dataset", "cifar10", "--image-size", "64"),
                                            "cifar10 is used at its native 32 px"),
    "train and val classes differ": (lambda t, m: mismatched_class_folders(t), "hold different classes"),
    "unknown sweep key": (lambda t, m: sweep_file(t, axis={"seed": [0]}), "unknown key 'axis' (did you mean 'axes'?)"),
    "empty axes": (lambda t, m: sweep_file(t, axes={}), "'axes' is empty"),
    "empty axis list": (lambda t, m: sweep_file(t, axes={"method": []}), "axes.method must be a non-empty list"),
    "unknown axis": (lambda t, m: sweep_file(t, axes={"metod": ["byol"]}), "axes: unknown key 'metod' (did you mean 'method'?)"),
    "negative cpu": (lambda t, m: sweep_file(t, resources={"cpu": -1}), "resources.cpu: -1 is not valid"),
    "zero concurrency": (lambda t, m: sweep_file(t, max_concurrent=0), "max_concurrent: 0 is not valid"),
    "concurrency on resume": (lambda t, m: sweep_file(t, "--resume", "--max-concurrent", "2"), "applies to a new sweep"),
    "bad trial in grid": (lambda t, m: sweep_file(t, trial={k: v for k, v in SWEEP["trial"].items() if k != "batch_size"},
                                                  axes={"batch_size": [64, 4096]}), "trial batch_size=4096: global batch 4096 (batch_size x workers) is larger"),
    "unreachable address": (lambda t, m: sweep_file(t, "--address", "127.0.0.1:1"), "cannot reach the Ray cluster at --address 127.0.0.1:1"),
    "results of another run": (lambda t, m: earlier_results(t), "already holds results; pass --resume"),
    "nothing to resume": (lambda t, m: sweep_file(t, "--resume"), "holds no sweep to resume"),
    "unwritable results dir": (lambda t, m: sweep_file(t) + ["--results-dir", str(a_file_as_folder(t))], "cannot be written"),
    "Tune state cut short": (lambda t, m: cut_tune_state(t), "experiment_state-2026-12-03_06-04-30.json is cut short, so the sweep cannot be resumed"),
    "report of nothing": (lambda t, m: ["report", str(t / "no-such-sweep")], "does not exist"),
    "unknown baseline": (lambda t, m: ["compare", "no-such-baseline", str(t), "--baselines-dir", str(t)], "neither a results folder"),
}


def snapshot(folder: Path) -> dict:
    """Every file's size and time, and every folder: a check that leaves an empty folder behind fails too."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "folder" for p in folder.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, tmp_path, capsys, monkeypatch):
    build, message = CASES[case]
    argv = build(tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and err.startswith("byol-bench: error: ") and "Traceback" not in err
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_asked_for_without_one(tmp_path, capsys):
    assert main(train(tmp_path, "--device", "cuda")) == 2
    assert "PyTorch sees no CUDA device here; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gpus_the_cluster_lacks_are_refused_before_scheduling(tmp_path, capsys, ray_cluster, monkeypatch):
    monkeypatch.setattr(ray_cluster, "cluster_resources", lambda: {"CPU": 2.0})  # no GPU, on any machine
    assert main(sweep_file(tmp_path, resources={"cpu": 1, "gpu": 1})) == 2
    assert "asks for 1 GPU per trial (1 worker(s) x 1) but the Ray cluster has 0" in capsys.readouterr().err
    assert not (tmp_path / "results" / "s").exists()


def test_a_worker_larger_than_every_node_is_refused_before_scheduling(tmp_path, capsys, ray_cluster, monkeypatch):
    two_nodes = [{"Alive": True, "Resources": {"CPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 1.0}}]
    monkeypatch.setattr(ray_cluster, "nodes", lambda: two_nodes)  # 2 CPUs in all, but 1 per node
    assert main(sweep_file(tmp_path, resources={"cpu": 2})) == 2
    assert "no Ray node holds one worker's 2 CPU and 0 GPU (the largest has 1 CPU, 0 GPU)" in capsys.readouterr().err
    assert not (tmp_path / "results" / "s").exists()


def test_ddp_workers_the_cluster_cannot_hold_are_refused_before_scheduling(tmp_path, capsys, ray_cluster):
    assert main(sweep_file(tmp_path, axes={"workers": [1, 4]}, trial={**SWEEP["trial"], "batch_size": 16})) == 2
    assert "asks for 4 CPUs per trial (4 worker(s) x 1) but the Ray cluster has 2" in capsys.readouterr().err
    assert not (tmp_path / "results" / "s").exists()
