"""DDP trials on the CPU (gloo): a trial split over two workers is the same experiment as on one worker."""

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from byol_bench.cli import main
from byol_bench.models.methods import BUILT_IN_METHODS
from byol_bench.on_ray import failpoints
from byol_bench.trial.distributed import gather_rows, shard, sync_batchnorm
from byol_bench.trial.state import load_checkpoint
from conftest import TINY, pretrained, quiet_fast_ray, tiny

# Two steps of a global batch of 64 images: pretraining alone, the weights are what is compared.
# NCHW and 32 px: the memory layout is not under test, and NHWC convolutions' float noise, or Barlow Twins'
# at 16 px, would blur the difference a missing gather makes; fp32, as bf16's rounding would too.
SPLIT = dict(subset=128, epochs=1, timing_warmup_steps=0, channels_last=False, image_size=32, precision="fp32")


def _barlow_twins_per_rank(method):
    """Barlow Twins' loss of each rank's own rows: its forward without the gather of the global batch."""
    def forward(view0, view1):
        return method.criterion(method.projection_head(method.backbone(view0)), method.projection_head(method.backbone(view1)))
    method.forward = forward


def _dino_centre_per_rank(method):
    """DINO's centre from each rank's own teacher outputs: lightly's centring without its all-reduce."""
    method.criterion._center_fn = lambda x, dim: x.mean(dim=dim, keepdim=True)


def _not_gathered(attribute: str, part: str = "criterion"):
    """A run with ``gather_distributed``-like switch ``attribute`` of ``method.<part>`` turned off."""
    return lambda method: setattr(functools.reduce(getattr, part.split("."), method), attribute, False)


# DDP runs with one cross-rank piece taken away: each must end elsewhere than one process, or the
# equivalence test could not tell that piece's absence. Every piece of a method that spans the batch is here:
# gathered negatives, queues and support sets filled with the global batch, cross-correlation, variance and
# covariance, Sinkhorn and DINO's centre over it, and BatchNorm over it.
BROKEN = {"simclr without gathered negatives": ("simclr", {}, _not_gathered("gather_distributed")),
          "byol without SyncBatchNorm": ("byol", {"sync_batchnorm": False}, None),
          "moco with a queue of its own keys": ("moco", {}, _not_gathered("gather_distributed", "criterion.memory_bank")),
          "nnclr with a support set of its own rows": ("nnclr", {}, _not_gathered("gather_distributed", "support_set")),
          "barlowtwins with each rank's cross-correlation": ("barlowtwins", {}, _barlow_twins_per_rank),
          "vicreg with each rank's variance and covariance": ("vicreg", {}, _not_gathered("gather_distributed")),
          "dcl without gathered negatives": ("dcl", {}, _not_gathered("gather_distributed")),
          "dino with each rank's centre": ("dino", {}, _dino_centre_per_rank),
          "swav with each rank's Sinkhorn": ("swav", {}, _not_gathered("sinkhorn_gather_distributed"))}


def _split(method: str, world: int, **knobs) -> dict:
    """The knobs of a 2-step trial of ``method`` with the global batch of 64 split over ``world`` workers."""
    return tiny(method, **SPLIT, batch_size=64 // world, workers=world, **knobs)


@functools.lru_cache(maxsize=None)
def one_worker(method: str, **knobs):
    """(weights, state) of one process with the whole global batch: the reference of the DDP tests."""
    return pretrained(_split(method, 1, **knobs))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_and_norm(out: str) -> None:
    """One rank's share of a gather and of a BatchNorm over the global batch (forward and backward)."""
    rows = torch.arange(7 * 3, dtype=torch.float32).view(7, 3)
    gathered = gather_rows(rows[shard(7)], 7)
    torch.manual_seed(0)
    images = torch.randn(8, 4, 5, 5)
    norm = sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(4)), torch.device("cpu"))
    local = images[shard(8)].requires_grad_()
    (norm(local) * torch.arange(4.0).view(1, 4, 1, 1)).square().sum().backward()
    torch.save({"gathered": gathered, "output_grad": local.grad, "running": norm[0].running_var.clone()},
               f"{out}/rank{dist.get_rank()}-gather.pt")


def _run_rank(rank: int, world: int, port: int, out: str) -> None:
    """One DDP rank: joins the gloo group; pretrains every method on its share of each global batch,
    saving the final weights and trial state; then gathers rows and normalises a batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for method in BUILT_IN_METHODS:
            weights, state = pretrained(_split(method, world))
            torch.save({"method": weights, "state": state}, f"{out}/rank{rank}-{method}.pt")
        for name, (method, knobs, break_method) in BROKEN.items():
            weights, _ = pretrained(_split(method, world, **knobs), break_method)
            torch.save(weights, f"{out}/rank{rank}-{name}.pt")
        _gather_and_norm(out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The folder where two gloo ranks saved what they computed (one spawn of two processes for all tests:
    starting them costs more than what they compute)."""
    out = tmp_path_factory.mktemp("two-ranks")
    mp.spawn(_run_rank, args=(2, _free_port(), str(out)), nprocs=2)
    return out


@pytest.mark.parametrize("method", sorted(BUILT_IN_METHODS))
def test_two_workers_train_the_same_weights_as_one(two_ranks, method):
    """The global batch of 64 split over two gloo ranks (SyncBatchNorm, gathered negatives, DDP's averaged
    gradients, the EMA targets; MoCo's queue, NNCLR's support set and DINO's centre, which are in the weights
    compared) ends at one worker's weights; the views come from the same draws, so augmentation (DINO's and
    SwAV's local crops included) is the same on both sides. Queues and support sets are filled with the whole
    global batch on every rank, so even they match one worker's exactly."""
    single, one = one_worker(method)
    ranks = [torch.load(two_ranks / f"rank{r}-{method}.pt", weights_only=False) for r in range(2)]
    for rank_state in ranks:
        assert rank_state["method"].keys() == single.keys()
        for name, weight in single.items():
            # float noise of the reordered sums is ~3e-5 here, up to 4e-4 (DCL's first layer) with AVX2 kernels;
            # with a cross-rank piece taken away (BROKEN) the weights, BatchNorm statistics or memories differ by
            # more than 2e-3. NNCLR's support set holds projections, BatchNorm's outputs of a few units, whose
            # noise reaches 2e-3; another rank's rows there would differ by units.
            atol = 5e-3 if name.endswith(".bank") else 1e-3
            torch.testing.assert_close(rank_state["method"][name], weight, rtol=1e-4, atol=atol, msg=name)
    for key in single:  # identical on both ranks, target networks and memories included
        assert torch.equal(ranks[0]["method"][key], ranks[1]["method"][key]), key
    two = ranks[0]["state"]
    assert len(two.step_times) == len(one.step_times) == 2  # both took the 2 steps of global batch 64
    assert [row["lr"] for row in two.history] == [row["lr"] for row in one.history]
    assert two.history[0]["loss"] == pytest.approx(one.history[0]["loss"], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_without_a_cross_rank_piece_two_workers_train_other_weights(two_ranks, name):
    method, knobs, _ = BROKEN[name]
    single, _ = one_worker(method, **knobs)
    broken = torch.load(two_ranks / f"rank0-{name}.pt", weights_only=False)
    assert max((broken[key].float() - weight.float()).abs().max().item() for key, weight in single.items()) > 2e-3


def test_gathered_rows_and_global_batchnorm_match_one_process(two_ranks):
    ranks = [torch.load(two_ranks / f"rank{r}-gather.pt") for r in range(2)]
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
    knobs = {**TINY, **SPLIT, "method": "simclr", "batch_size": 32}
    out = tmp_path / "trial.json"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(_free_port()), "-m", "byol_bench.cli", "train", "--workers", "2", "--out", str(out),
                          *(f"--{key.replace('_', '-')}={value}" for key, value in knobs.items())],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == [f"wrote {out}", f"wrote {out.with_name('trial.backbone.safetensors')} and its "
                                       "model card"]  # rank 0 alone writes: the result, then its weights
    two = json.loads(out.read_text())
    assert two["status"] == "ok" and two["config"]["workers"] == 2 and two["run"]["global_batch_size"] == 64
    _, one = pretrained({**knobs, "batch_size": 64})
    assert two["history"][0]["loss"] == pytest.approx(one.history[0]["loss"], rel=1e-4, abs=1e-4)


# --- DDP trials in sweeps (Ray Train inside Ray Tune) ---------------------------------------------


def _ddp_sweep(folder: Path, name: str, axes: dict, max_failures: int = 0, **trial) -> Path:
    path = folder / f"{name}.yaml"
    knobs = {**TINY, "subset": 256, "batch_size": 32, "epochs": 2, **trial}
    knobs.pop("threads")
    path.write_text(yaml.safe_dump({"name": name, "trial": knobs, "axes": axes, "resources": {"cpu": 1},
                                    "max_failures": max_failures}))
    return path


# Quick node-death detection for the simulated cluster: a node is declared dead after about 1.5 s of silence.
FAST_NODE_DEATH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


def _node_running(nodes: list, title: str):
    """The node among ``nodes`` (ray.cluster_utils' simulated ones) with a worker process titled ``title``, or None:
    Ray titles each worker after the actor it runs (a Tune trial's ImplicitFunc, a DDP rank's RayTrainWorker)."""
    import psutil

    for node in nodes:
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        for worker in raylet.children(recursive=True):
            try:
                if title in " ".join(worker.cmdline()):
                    return node
            except psutil.Error:  # ended meanwhile
                pass
    return None


def test_a_ddp_trial_in_a_sweep_whose_node_is_lost_continues_from_its_checkpoint_on_the_nodes_left(tmp_path, monkeypatch):
    """Simulated nodes of one CPU each (the head has none), into one results folder. Part-way through each trial, a
    node it runs on is killed (for the 2-rank DDP trial, one rank's; its coordinator is on the head) and a fresh
    node joins: Tune retries the trial on the nodes left from its last checkpoint. One row per trial, each recording
    its restart; no epoch twice in the tables, none run again. Each trial pauses once its second epoch is reported
    (a failpoint), so the node is lost at that point on any machine, however fast. The DDP trial (Ray Train inside
    Ray Tune) is one row with its global batch, and its checkpoints are rank 0's state alone. The trials train the
    example plug-in package's method, which every node's workers find through its entry point."""
    from ray.cluster_utils import Cluster

    quiet_fast_ray()
    monkeypatch.setenv(failpoints.ENV, json.dumps([{"at": "after_epoch", "action": "pause", "trial": trial_id, "epoch": 2}
                                                   for trial_id in ("workers=1", "workers=2")]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "_system_config": FAST_NODE_DEATH})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        cluster.wait_for_nodes()
        address = cluster.address
        # The method is the example plug-in's (examples/byol-bench-tico), installed where every node's workers run
        # (docs/extending.md: or shipped with Ray's runtime_env): its entry point reaches the ranks on the nodes.
        path = _ddp_sweep(tmp_path, "nodes", {"workers": [1, 2]}, max_failures=1, method="tico", epochs=3)
        folder = tmp_path / "results" / "nodes"
        script = os.path.join(os.path.dirname(sys.executable), "byol-bench")
        sweep = subprocess.Popen([script, "sweep", str(path), "--results-dir", str(tmp_path / "results"), "--address", address],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(sweep.stdout), daemon=True)
        reader.start()
        # The one-worker trial runs first (the grid's order; one trial at a time: the DDP trial takes both CPUs). A
        # node is killed once the sweep has printed the trial's second epoch: Tune has that epoch's checkpoint then
        # (a checkpoint folder on disk may not be registered yet), and the trial is paused there.
        for trial_id, title in (("workers=1", "ImplicitFunc"), ("workers=2", "RayTrainWorker")):
            deadline = time.time() + 300
            while not any(line.startswith(f"{trial_id}: epoch 2/") for line in lines):
                assert time.time() < deadline and sweep.poll() is None, "".join(lines)[-3000:]
                time.sleep(0.1)
            lost = _node_running(nodes, title)
            assert lost is not None, f"no worker node runs a {title}:\n" + "".join(lines)[-3000:]
            # A DDP trial's driver and Ray Train's controller run on the head node, which is never lost.
            assert _node_running(nodes, "TrainController") is None
            cluster.remove_node(lost, allow_graceful=False)
            nodes = [node for node in nodes if node is not lost] + [cluster.add_node(num_cpus=1)]
        try:
            sweep.wait(timeout=600)
        except subprocess.TimeoutExpired:
            sweep.kill()
            pytest.fail(f"the sweep did not end within 10 minutes of the last node loss:\n{''.join(lines)[-6000:]}")
        reader.join(timeout=10)
        output = "".join(lines)
        assert sweep.returncode == 0, output[-3000:]
        # Without --address a sweep starts a cluster of its own, even while this one runs on the same machine.
        private = subprocess.run([sys.executable, "-c", "from byol_bench.on_ray.cluster import start_ray; "
                                  "print(start_ray(None, False)[0].get_runtime_context().gcs_address)"],
                                 capture_output=True, text=True, timeout=120)
        assert private.returncode == 0 and private.stdout.strip() not in ("", address), private.stderr[-3000:]
    finally:
        cluster.shutdown()
    for trial_id in ("workers=1", "workers=2"):
        assert f"{trial_id}: failed (failure 1); retrying it from its last checkpoint" in output
        assert f"{trial_id}: resumed at epoch 3 from its checkpoint\n" in output, output[-3000:]
    assert "run again" not in output
    trials = pd.read_parquet(folder / "trials.parquet").set_index("trial_id")
    assert set(trials["status"]) == {"ok"} and trials["restarts"].to_dict() == {"workers=1": 1, "workers=2": 1}
    by_workers = trials.set_index("workers")
    assert by_workers.loc[1, "global_batch_size"] == 32 and by_workers.loc[2, "global_batch_size"] == 64
    assert by_workers.loc[2, "total_steps"] == 3 * (256 // 64) and by_workers.loc[2, "peak_lr"] == pytest.approx(0.06 * 64 / 128)
    assert trials["knn_top1"].between(0, 1).all() and (trials["images_per_s"] > 0).all()
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert epochs.groupby("trial_id")["epoch"].apply(list).to_dict() == {trial_id: [1, 2, 3] for trial_id in trials.index}
    # The DDP trial's checkpoints are Ray Train's, in the same results folder: rank 0's state alone.
    checkpoints = sorted(p for p in (folder / "train").glob("*/checkpoint_*") if p.is_dir())
    assert len(checkpoints) >= 1 and all(sorted(p.name for p in c.iterdir()) == ["state.pt"] for c in checkpoints)
    checkpoint = load_checkpoint(checkpoints[-1] / "state.pt")
    assert checkpoint.state.epoch == 3 and "backbone.0.weight" in checkpoint.method
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["address"] == address and manifest["cluster_resources"]["CPU"] == 2
    assert (folder / "report.html").exists() and manifest["plugins"]["method tico"].startswith("byol-bench-tico ")
    assert trials["weights"].map(lambda weights: (folder / weights).is_file()).all()  # from each trial's last node


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
