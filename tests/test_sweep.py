import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from byol_bench.cli import main
from byol_bench.on_ray import failpoints
from byol_bench.on_ray.sweep import run_sweep
from byol_bench.plan.sweep_file import expand, load_sweep, run_order
from byol_bench.results.tables import DiskFull, write_tables
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
    ("trial-precision", 2 * 3),  # fp32, bf16 x 3 seeds
    ("trust", 3 * 3),  # BYOL, SimCLR, SimSiam x 3 seeds; its transfer set is a registered data set (no script first)
    ("vit-vs-cnn", 2),  # SimCLR with the small CNN and with a timm ViT
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


def test_ctrl_c_while_the_floors_are_measured_leaves_nothing_and_says_how_to_start_again(tmp_path, ray_cluster,
                                                                                           capsys, monkeypatch):
    """No trial has run, so there is nothing to resume: the folder is left as it was (gone), and the hint is the
    sweep's own command, without --resume."""
    from byol_bench.on_ray import sweep as tune_runner

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_runner, "_shared_floors", interrupted)
    path = write_sweep(tmp_path, "stopped", {"method": ["simclr"]})
    assert run_sweep(load_sweep(path), tmp_path / "results") == 130
    err = capsys.readouterr().err
    assert f"start it again with 'byol-bench sweep {path} --results-dir {tmp_path / 'results'}'" in err
    assert not (tmp_path / "results").exists()


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


def _mid_run(experiment: Path, checkpoints: int = 1) -> list:
    """Trial folders with ``checkpoints`` or more and a recorded result, but no final one: trials stopped part-way."""
    return [trial for trial in {path.parent for path in experiment.glob("*/checkpoint_*")}
            if len(list(trial.glob("checkpoint_*"))) >= checkpoints
            and (lines := _result_lines(trial)) and not any('"result_json"' in line for line in lines)]


def _stop_when_part_way(process: subprocess.Popen, experiment: Path, finished: int, stop,
                        checkpoints: int = 1) -> tuple[dict, str]:
    """Wait until ``finished`` trials have finished and the next has ``checkpoints`` part-way, then ``stop(process)``;
    returns the finished trials' results as the stopped sweep left them, and its console output."""
    deadline = time.time() + 300
    while not (len(_finished_results(experiment)) == finished and _mid_run(experiment, checkpoints)):
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
    """The driver and everything it started (its own Ray cluster) die at once, as on a crashed machine."""
    os.killpg(process.pid, signal.SIGKILL)


def _refused_while_running(sweep: list[str], folder: Path, running: subprocess.Popen, capsys) -> None:
    """Once ``running`` holds the results folder, a second sweep there (new or --resume) is refused in one line
    naming it, and leaves its lock alone."""
    lock, deadline = folder / "sweep.lock", time.time() + 120
    while f'"pid": {running.pid},' not in (lock.read_text() if lock.exists() else ""):
        assert time.time() < deadline and running.poll() is None, "the resumed sweep never took the results folder"
        time.sleep(0.2)
    held = lock.read_text()
    for flags in ([], ["--resume"]):
        assert main([*sweep, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert f"is in use by a running sweep (pid {running.pid} on " in err and len(err.splitlines()) == 1, err
    assert lock.read_text() == held


def test_an_interrupted_sweep_resumes_only_its_missing_trials(tmp_path, capsys, monkeypatch, ray_cluster):
    """Killed outright (SIGKILL) with one trial done and one part-way, resumed (the dead sweep's lock taken over;
    a second sweep meanwhile refused), interrupted again by Ctrl-C with two done and the third part-way, its
    newest checkpoint then truncated, resumed again: every part-way trial continues from a whole checkpoint, no
    finished trial is rerun, and the three trials end as three rows. Failpoints pause the second trial after its
    first epoch and the third after its second, on their first runs: each stop lands there on any machine. The
    killed sweep runs on a cluster of its own (its workers find the failpoints in their environment); the resumed
    ones join the test session's cluster (--address), which hands them the failpoints, and start no cluster."""
    monkeypatch.setenv(failpoints.ENV, json.dumps([
        {"at": "after_epoch", "action": "pause", "trial": "method=simclr,seed=1", "epoch": 1, "first_run": True},
        {"at": "after_epoch", "action": "pause", "trial": "method=simclr,seed=2", "epoch": 2, "first_run": True}]))
    path = write_sweep(tmp_path, "resumable", {"method": ["simclr"], "seed": [0, 1, 2]}, max_concurrent=1,
                       trial={"epochs": 3, "batch_size": 32})
    results, experiment = tmp_path / "results", tmp_path / "results" / "resumable" / "tune"
    own_cluster = ["sweep", str(path), "--results-dir", str(results)]
    sweep = [*own_cluster, "--address", ray_cluster.get_runtime_context().gcs_address]
    first = _bench(*own_cluster, start_new_session=True)
    done, _ = _stop_when_part_way(first, experiment, 1, _kill_everything)
    resumed = _bench(*sweep, "--resume")
    _refused_while_running(sweep, results / "resumable", resumed, capsys)
    done_again, output = _stop_when_part_way(resumed, experiment, 2, lambda process: process.send_signal(signal.SIGINT),
                                             checkpoints=2)
    assert f"was locked by a sweep that is no longer running (pid {first.pid} on " in output
    assert resumed.returncode == 130 and "--resume" in output  # Ctrl-C: exit 130, saying how to go on
    assert "resumed at epoch" in output
    assert done_again.items() >= done.items()  # the first run's finished trial kept its result
    [part_way] = _mid_run(experiment, checkpoints=2)
    # Every checkpoint but the oldest cut short, as a full disk or a crash leaves one: Tune hands the newest it
    # recorded (the one on disk may be newer, saved as Ctrl-C came), and the trial falls back to the oldest.
    for checkpoint in sorted(part_way.glob("checkpoint_*"))[1:]:
        state = checkpoint / "state.pt"
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    last = _bench(*sweep, "--resume")
    output, _ = last.communicate(timeout=300)
    assert last.returncode == 0, output
    assert "is truncated or damaged; falling back to the one before it" in output
    assert "resumed at epoch" in output  # the part-way trial continued from its previous checkpoint
    trials = pd.read_parquet(results / "resumable" / "trials.parquet")
    assert len(trials) == 3 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    assert trials["restarts"].sort_values().tolist() == [0, 1, 1]  # each part-way trial resumed once
    for trial_id, result_json in done_again.items():  # a finished trial kept its result: it was not rerun
        assert trials.set_index("trial_id").loc[trial_id, "time"] == json.loads(result_json)["provenance"]["time"]


# --- Faults: a damaged checkpoint, a full disk -----------------------------------------------------


def _cut_short(state: Path) -> None:
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])


def _flip_a_byte(state: Path) -> None:
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside a stored record: the zip still opens, its CRC no longer matches
    state.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_cut_short, _flip_a_byte])
def test_a_damaged_checkpoint_falls_back_to_the_one_before_it_then_to_a_fresh_start(tmp_path, damage):
    import torch
    from ray import tune

    from byol_bench.on_ray.trainable import newest_whole

    trial = tmp_path / "trial"
    for epochs in (1, 2, 3):
        (trial / f"checkpoint_{epochs - 1:06d}").mkdir(parents=True)
        torch.save({"epochs": epochs, "weights": torch.arange(1000.0)}, trial / f"checkpoint_{epochs - 1:06d}" / "state.pt")
    handed = tune.Checkpoint.from_directory(str(trial / "checkpoint_000001"))  # Tune's newest: the third not recorded
    damage(trial / "checkpoint_000001" / "state.pt")
    notes = []
    assert newest_whole(handed, notes.append)["epochs"] == 1
    assert notes == [f"checkpoint {trial}/checkpoint_000001 is truncated or damaged; falling back to the one before it"]
    damage(trial / "checkpoint_000000" / "state.pt")
    notes.clear()
    assert newest_whole(handed, notes.append) is None
    assert notes[-1] == f"checkpoint {trial}/checkpoint_000000 is truncated or damaged; starting over from epoch 1"


def test_a_checkpoint_the_disk_has_no_room_for_fails_its_trial_saying_so(tiny_config, tmp_path):
    from byol_bench.on_ray.trainable import run_and_report

    def report(metrics: dict, checkpoint_folder: str | None = None) -> None:
        if checkpoint_folder is not None:  # Ray copying the checkpoint into the sweep's storage
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    with pytest.raises(OSError, match=r"no space left to save epoch 1's checkpoint \(\d+\.\d\d MB\) into the sweep's storage"):
        run_and_report("t", tiny_config("simclr", epochs=1), {}, None, report, saves_checkpoints=True,
                       weights_to=str(tmp_path / "weights.safetensors"))


def test_a_table_the_disk_has_no_room_for_is_not_written_at_all(tmp_path, monkeypatch):
    rows = [{"trial_id": "a", "method": "byol", "batch_size": 64, "momentum_schedule": None, "seed": 0, "status": "ok"}]
    write_tables(tmp_path, rows, [{"trial_id": "a", "epoch": 1, "loss": 0.5}])
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def no_room(source, destination):  # the last step of an atomic write: as a full disk fails the one before it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", no_room)
    with pytest.raises(DiskFull, match=rf"no space left for {tmp_path}/trials.parquet: 0.00 MB needed, [\d.]+ MB free"):
        write_tables(tmp_path, [{**rows[0], "status": "failed"}], [])
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before  # the old tables, whole; no temporary file
    monkeypatch.undo()
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 10))
    with pytest.raises(DiskFull, match=r"trials.parquet, trials.csv, epochs.parquet, embeddings.parquet: 0.0\d MB needed, 0.00 MB free"):
        write_tables(tmp_path, [{**rows[0], "status": "failed"}], [])  # none of the three begun: all old or all new
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB file system of its own (tmpfs; mounting needs root), or a skip where that is refused."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.strip() or 'not root'}); the unit tests above cover the "
                    "same writes with the disk-full error injected")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_sweep_whose_disk_fills_stops_in_time_and_resumes_without_rerunning_a_trial(tmp_path, small_disk, ray_cluster,
                                                                                     capsys, monkeypatch):
    """Another writer fills the disk as the second of two trials trains, leaving less room than the sweep needs
    once that trial writes its next checkpoint: the sweep stops while Ray's state can still be saved, says in one
    line which folder lacks how much and how to resume, exits 2 and writes no table; once space is freed,
    --resume finishes the second trial from its checkpoint and does not rerun the first."""
    from byol_bench.on_ray import progress
    from byol_bench.on_ray.sweep import _largest_checkpoint, _room_needed

    path = write_sweep(tmp_path, "full", {"method": ["simclr"], "seed": [0, 1]}, max_concurrent=1, trial={"epochs": 4})
    first, second = (trial.trial_id for trial in expand(load_sweep(path)))
    folder, filler, result = small_disk / "full", small_disk / "filler", progress.SweepProgress.result

    def fill_after_the_first_epoch_of_the_second(self, trial_id, reported):
        result(self, trial_id, reported)
        if trial_id == second and reported.get("epoch") == 1 and not filler.exists():
            checkpoint = _largest_checkpoint(folder)  # room for the next checkpoint, not for the one after
            leave = _room_needed(checkpoint, 1) + checkpoint // 2
            filler.write_bytes(bytes(shutil.disk_usage(small_disk).free - leave))

    monkeypatch.setattr(progress.SweepProgress, "result", fill_after_the_first_epoch_of_the_second)
    sweep = ["sweep", str(path), "--results-dir", str(small_disk)]
    assert main(sweep) == 2
    err = capsys.readouterr().err
    assert re.search(rf"the disk holding {folder} has [\d.]+ MB free, less than the [\d.]+ MB the sweep needs: "
                     "stopping it while Ray's state can still be saved", err), err
    assert re.fullmatch(rf"byol-bench: error: no space left for {folder}/tune/ \(checkpoints and Ray's state\): [\d.]+ MB "
                        rf"needed, [\d.]+ MB free on its disk; free some space there and run again with 'byol-bench sweep "
                        rf"{path} --results-dir {small_disk} --resume' \(its finished trials are kept, not rerun\)",
                        err.strip().splitlines()[-1]), err
    assert not (folder / "trials.parquet").exists() and not list(folder.rglob(".*.tmp"))
    filler.unlink()
    monkeypatch.undo()
    assert main([*sweep, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{first}: epoch" not in err  # the first trial is not rerun; the second continues from a checkpoint
    assert re.search(f"{re.escape(second)}: resumed at epoch [234] from its checkpoint\n", err), err
    trials = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    assert set(trials["status"]) == {"ok"} and trials["restarts"].to_dict() == {first: 0, second: 1}
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert epochs.groupby("trial_id")["epoch"].apply(list).to_dict() == {first: [1, 2, 3, 4], second: [1, 2, 3, 4]}


def test_trials_start_with_each_method_at_each_batch_size_in_turn():
    order = [(p.knobs["method"], p.knobs["batch_size"]) for p in run_order(expand(load_sweep(PRESETS / "quick.yaml")))]
    assert order == [("byol", 16), ("simclr", 16), ("simsiam", 16), ("byol", 32), ("simclr", 32), ("simsiam", 32),
                     ("byol", 16), ("byol", 32)]  # BYOL's second momentum schedule last
