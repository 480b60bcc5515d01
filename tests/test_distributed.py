"""DDP trials on the CPU (gloo): a trial split over two workers is the same experiment as on one worker."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from byol_bench.cli import main
from byol_bench.config import make_config
from byol_bench.distributed import gather_rows, shard, sync_batchnorm
from byol_bench.sweep import load_sweep, run_sweep
from byol_bench.train import run_trial
from conftest import TINY, quiet_fast_ray

# Two steps of a global batch of 64 images; the probe is short: the weights are what is compared.
# NCHW: the memory layout is not under test, and NHWC convolutions' float noise (SimCLR's first conv
# moved 3e-4 between layouts in one process) would blur the 4e-3 of a missing gather.
SPLIT = dict(TINY, subset=128, epochs=1, timing_warmup_steps=0, probe_epochs=1, channels_last=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_rank(rank: int, world: int, port: int, knobs: dict, out: str) -> None:
    """One DDP rank: joins the gloo group, runs the trial, saves its final weights and result."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        states = []
        result = run_trial(make_config({**knobs, "workers": world}), on_epoch=lambda row, state: states.append(state))
        torch.save({"method": states[-1]["method"], "result": result}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_split(tmp_path, world: int, knobs: dict) -> list[dict]:
    out = tmp_path / f"world{world}"
    out.mkdir()
    mp.spawn(_run_rank, args=(world, _free_port(), knobs, str(out)), nprocs=world)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.mark.parametrize("method", ["byol", "simclr", "simsiam"])
def test_two_workers_train_the_same_weights_as_one(tmp_path, method):
    """The global batch of 64 split over two gloo ranks (SyncBatchNorm, SimCLR's gathered negatives, DDP's
    averaged gradients, BYOL's EMA target) ends at one worker's weights; the views come from the same
    draws, so augmentation is the same on both sides."""
    one_states = []
    one = run_trial(make_config({**SPLIT, "method": method, "batch_size": 64}),
                    on_epoch=lambda row, state: one_states.append(state))
    ranks = _run_split(tmp_path, 2, {**SPLIT, "method": method, "batch_size": 32})
    single = one_states[-1]["method"]
    for rank_state in ranks:
        assert rank_state["method"].keys() == single.keys()
        for name, weight in single.items():
            # float noise of the reordered sums is ~3e-5 here; without SyncBatchNorm or without SimCLR's
            # gathered negatives the weights and BatchNorm statistics differ by 4e-3 to 1e-2.
            torch.testing.assert_close(rank_state["method"][name], weight, rtol=1e-4, atol=2e-4, msg=name)
    for key in single:  # identical on both ranks, BYOL's target network included
        assert torch.equal(ranks[0]["method"][key], ranks[1]["method"][key]), key
    two = ranks[0]["result"]
    assert two["run"]["global_batch_size"] == one["run"]["global_batch_size"] == 64
    assert two["run"]["total_steps"] == one["run"]["total_steps"] == 2
    assert two["config"]["workers"] == 2 and two["run"]["peak_lr"] == one["run"]["peak_lr"]
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=1e-4, abs=1e-4)
    assert two["metrics"]["knn_top1"] == pytest.approx(one["metrics"]["knn_top1"], abs=0.02)


def _gather_and_norm(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
        gathered = gather_rows(rows[shard(7)], 7)
        torch.manual_seed(0)
        images = torch.randn(8, 4, 5, 5)
        norm = sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(4)), torch.device("cpu"))
        local = images[shard(8)].requires_grad_()
        (norm(local) * torch.arange(4.0).view(1, 4, 1, 1)).square().sum().backward()
        torch.save({"gathered": gathered, "output_grad": local.grad, "running": norm[0].running_var.clone()},
                   f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_rows_and_global_batchnorm_match_one_process(tmp_path):
    mp.spawn(_gather_and_norm, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    rows = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    torch.manual_seed(0)
    images = torch.randn(8, 4, 5, 5).requires_grad_()
    norm = torch.nn.BatchNorm2d(4)
    (norm(images) * torch.arange(4.0).view(1, 4, 1, 1)).square().sum().backward()
    for r, got in enumerate(ranks):
        assert torch.equal(got["gathered"], rows)  # uneven shards (4 + 3 rows), in rank order
        torch.testing.assert_close(got["output_grad"], images.grad[shard(8, r, 2)], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["running"], norm.running_var)


def test_torchrun_runs_a_ddp_trial_through_the_train_command(tmp_path):
    """Without Ray: torchrun starts 'byol-bench train --workers 2' as two gloo ranks, which train the same
    experiment as one process with the whole global batch; rank 0 alone writes the result."""
    knobs = {**SPLIT, "method": "simclr", "batch_size": 32}
    out = tmp_path / "trial.json"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(_free_port()), "-m", "byol_bench.cli", "train", "--workers", "2", "--out", str(out),
                          *(f"--{key.replace('_', '-')}={value}" for key, value in knobs.items())],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote") == 1
    two = json.loads(out.read_text())
    assert two["status"] == "ok" and two["config"]["workers"] == 2 and two["run"]["global_batch_size"] == 64
    one = run_trial(make_config({**knobs, "batch_size": 64}), log=lambda line: None)
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=1e-4, abs=1e-4)


# --- DDP trials in sweeps (Ray Train inside Ray Tune) ---------------------------------------------


def _ddp_sweep(folder: Path, name: str, axes: dict, **trial) -> Path:
    path = folder / f"{name}.yaml"
    knobs = {**TINY, "subset": 256, "batch_size": 32, "epochs": 2, **trial}
    knobs.pop("threads")
    path.write_text(yaml.safe_dump({"name": name, "trial": knobs, "axes": axes, "resources": {"cpu": 1},
                                    "max_failures": 0}))
    return path


def test_a_ddp_trial_in_a_sweep_is_one_row_with_its_global_batch(tmp_path, ray_cluster):
    path = _ddp_sweep(tmp_path, "ddp", {"workers": [1, 2]}, method="simclr")
    assert run_sweep(load_sweep(path), tmp_path / "results") == 0
    folder = tmp_path / "results" / "ddp"
    trials = pd.read_parquet(folder / "trials.parquet").set_index("workers")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}
    assert trials.loc[1, "global_batch_size"] == 32 and trials.loc[2, "global_batch_size"] == 64
    assert trials.loc[2, "total_steps"] == 2 * (256 // 64) and trials.loc[2, "peak_lr"] == pytest.approx(0.06 * 64 / 128)
    assert trials["knn_top1"].between(0, 1).all() and (trials["images_per_s"] > 0).all()
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert epochs.groupby("trial_id").size().tolist() == [2, 2]
    # The DDP trial's checkpoints are Ray Train's, in the same results folder: rank 0's state alone.
    checkpoints = sorted(p for p in (folder / "train").glob("*/checkpoint_*") if p.is_dir())
    assert len(checkpoints) >= 1 and all(sorted(p.name for p in c.iterdir()) == ["state.pt"] for c in checkpoints)
    state = torch.load(checkpoints[-1] / "state.pt", weights_only=False)
    assert state["epoch"] == 2 and "method" in state


def test_a_sweep_runs_across_two_ray_nodes_into_one_results_folder(tmp_path):
    """Two simulated nodes of one CPU each (ray.cluster_utils.Cluster): the 2-worker DDP trial must span
    both, and every trial's results land in the one results folder the driver names."""
    from ray.cluster_utils import Cluster

    quiet_fast_ray()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        address = cluster.address
        path = _ddp_sweep(tmp_path, "nodes", {"workers": [2], "method": ["byol"]}, epochs=1)
        script = os.path.join(os.path.dirname(sys.executable), "byol-bench")
        run = subprocess.run([script, "sweep", str(path), "--results-dir", str(tmp_path / "results"),
                              "--address", address], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        cluster.shutdown()
    folder = tmp_path / "results" / "nodes"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 1 and set(trials["status"]) == {"ok"} and set(trials["global_batch_size"]) == {64}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["address"] == address and manifest["cluster_resources"]["CPU"] == 2
    assert [p for p in (folder / "train").glob("*/checkpoint_2*") if p.is_dir()]  # rank 0, on either node
    assert (folder / "report.html").exists()


def test_ray_state_can_live_in_shared_storage_apart_from_the_tables(tmp_path, ray_cluster, capsys):
    """--storage URI: checkpoints and Tune state go there (every node must reach it); tables stay local."""
    path = _ddp_sweep(tmp_path, "stored", {"method": ["simsiam"]}, epochs=1)
    storage = f"file://{tmp_path / 'shared'}"
    assert main(["sweep", str(path), "--results-dir", str(tmp_path / "results"), "--storage", storage]) == 0
    assert len(pd.read_parquet(tmp_path / "results" / "stored" / "trials.parquet")) == 1
    assert list((tmp_path / "shared" / "stored" / "tune").glob("*/checkpoint_*"))
    assert not (tmp_path / "results" / "stored" / "tune").exists()
    capsys.readouterr()
    # The same storage again without --resume would mix two sweeps' trial folders: refused.
    assert main(["sweep", str(path), "--results-dir", str(tmp_path / "other"), "--storage", storage]) == 2
    assert "stored already holds results" in capsys.readouterr().err
