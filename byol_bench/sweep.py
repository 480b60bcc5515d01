"""Sweeps: a YAML grid of trials run by Ray Tune. The only module that imports ray.

The sweep file names fixed trial knobs (``trial``), the crossed ``axes``, the ``resources`` of a
trial's worker, concurrency and retries, and optional published ``anchors``. Everything is validated
and the grid expanded before Ray starts; each trial is ``train.run_trial`` inside a Tune function
trainable that reports every epoch with a checkpoint, so a retried or resumed trial continues. A trial
with ``workers`` > 1 is a DDP run: its Tune trial drives a Ray Train TorchTrainer whose workers each run
``run_trial`` as one rank, report through Tune, and checkpoint (rank 0) into the sweep's storage.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import socket
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from byol_bench.config import KEYS, TrialConfig, make_config, read_yaml
from byol_bench.errors import UserError, did_you_mean
from byol_bench.methods import METHODS, applicable, reads
from byol_bench.provenance import git_revision, versions
from byol_bench.results import check_writable, epoch_rows, summary, trial_row, write_json, write_tables

SWEEP_KEYS = ("name", "description", "trial", "method_overrides", "axes", "resources", "max_concurrent", "max_failures",
              "anchors")
TUNE_FOLDER = "tune"  # Ray Tune's experiment folder inside results/<sweep>/
TRAIN_FOLDER = "train"  # Ray Train's runs (DDP trials' checkpoints) inside results/<sweep>/
DRIVER_MEMORY = 512 * 2**20  # what a DDP trial's driver reserves: it only waits on its workers, which hold the CPUs/GPUs


@dataclass
class Sweep:
    name: str
    path: Path
    source: str  # the sweep file as given
    trial: dict  # knobs shared by every trial
    axes: dict[str, list]
    method_overrides: dict[str, dict] = field(default_factory=dict)  # e.g. each method's own head sizes
    cpus_per_worker: float = 1.0
    gpus_per_trial: float = 0.0  # resources.gpu: a fraction or 1 for one worker, G > 1 for G DDP workers
    max_concurrent: int | None = None
    max_failures: int = 1
    anchors: list[dict] = field(default_factory=list)
    description: str = ""

    @property
    def gpus_per_worker(self) -> float:
        """At most 1: a trial asking for G > 1 GPUs runs as G DDP workers of one GPU each."""
        return min(self.gpus_per_trial, 1.0)

    @property
    def resources(self) -> dict:
        """What each worker of a trial holds (a one-worker trial holds it itself)."""
        return {"cpu": self.cpus_per_worker, "gpu": self.gpus_per_worker}


@dataclass(frozen=True)
class PlannedTrial:
    trial_id: str
    knobs: dict  # exactly the keys this trial sets (method-specific keys only where the method reads them)

    @property
    def workers(self) -> int:
        return self.knobs.get("workers", 1)

    @property
    def resolved(self) -> dict:
        """Every knob this trial ran with, defaults included (those its method never reads left empty)."""
        return applicable(make_config(self.knobs).to_dict())


def _number(where: str, value, low: float, integer: bool = False):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < low:
        raise UserError(f"{where}: {value!r} is not valid; give a {'whole ' if integer else ''}number >= {low}")
    return value


def load_sweep(path: str | Path) -> Sweep:
    """Parse and validate a sweep file (the grid itself is validated by ``expand``)."""
    raw = read_yaml(path)
    for key in raw:
        if key not in SWEEP_KEYS:
            raise UserError(f"{path}: unknown key '{key}'{did_you_mean(key, SWEEP_KEYS)}; valid keys: {', '.join(SWEEP_KEYS)}")
    name = raw.get("name") or Path(path).stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"{path}: name {name!r} must be letters, digits, '-' or '_' (it names the results folder)")
    trial = raw.get("trial") or {}
    axes = raw.get("axes") or {}
    if not isinstance(trial, dict) or not isinstance(axes, dict):
        raise UserError(f"{path}: 'trial' and 'axes' must be mappings of config keys")
    if not axes:
        raise UserError(f"{path}: 'axes' is empty; list at least one knob to sweep, e.g. 'method: [byol, simclr]'")
    for key, values in axes.items():
        if key not in KEYS:
            raise UserError(f"{path}: axes: unknown key '{key}'{did_you_mean(key, KEYS)}")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: axes.{key} must be a non-empty list, e.g. '{key}: [{values!r}]'")
    overrides = raw.get("method_overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise UserError(f"{path}: method_overrides must map a method to its knobs, e.g. {{byol: {{hidden_dim: 1024}}}}")
    for method, knobs in overrides.items():
        if method not in METHODS:
            raise UserError(f"{path}: method_overrides: unknown method '{method}'{did_you_mean(method, METHODS)}")
        for key in knobs:
            if key not in KEYS or key in axes:
                raise UserError(f"{path}: method_overrides.{method}.{key}: not a trial key, or already an axis")
    overlap = set(trial) & set(axes)
    if overlap:
        raise UserError(f"{path}: {', '.join(sorted(overlap))} set both in 'trial' and in 'axes'; keep one")
    resources = raw.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
        raise UserError(f"{path}: resources must be a mapping with 'cpu' and/or 'gpu', e.g. {{cpu: 1, gpu: 0.5}}")
    sweep = Sweep(
        name=name, path=Path(path), source=Path(path).read_text(), trial=trial, axes=axes, method_overrides=overrides,
        cpus_per_worker=_number("resources.cpu", resources.get("cpu", 1), 0),
        gpus_per_trial=_number("resources.gpu", resources.get("gpu", 0), 0),
        max_concurrent=None if raw.get("max_concurrent") is None else _number("max_concurrent", raw["max_concurrent"], 1, integer=True),
        max_failures=_number("max_failures", raw.get("max_failures", 1), 0, integer=True),
        anchors=raw.get("anchors") or [], description=raw.get("description") or "",
    )
    if sweep.gpus_per_trial > 1:
        if sweep.gpus_per_trial != int(sweep.gpus_per_trial):
            raise UserError(f"{path}: resources.gpu {sweep.gpus_per_trial}: above 1 GPU a trial needs a whole number")
        if "workers" in trial or "workers" in axes or any("workers" in knobs for knobs in overrides.values()):
            raise UserError(f"{path}: resources.gpu {sweep.gpus_per_trial:g} already means {sweep.gpus_per_trial:g} "
                            "DDP workers of one GPU each; set either it or 'workers' (with resources.gpu: 1)")
    return sweep


def expand(sweep: Sweep) -> list[PlannedTrial]:
    """The grid's meaningful trials: a method-specific axis (momentum_schedule, temperature, ...) is
    crossed only with the methods that read it, so SimCLR runs once, not once per momentum schedule."""
    planned, seen = [], set()
    for combination in itertools.product(*sweep.axes.values()):
        knobs = {**sweep.trial, **dict(zip(sweep.axes, combination))}
        method = knobs.get("method", TrialConfig.method)
        knobs.update(sweep.method_overrides.get(method, {}))
        knobs = {key: value for key, value in knobs.items() if reads(method, key)}
        if sweep.gpus_per_trial:
            knobs.setdefault("device", "cuda")
        if sweep.gpus_per_trial > 1:
            knobs["workers"] = int(sweep.gpus_per_trial)
        knobs.setdefault("threads", max(1, int(sweep.cpus_per_worker)))
        trial_id = ",".join(f"{key}={knobs[key]}" for key in sweep.axes if key in knobs)
        if trial_id in seen:
            continue
        seen.add(trial_id)
        try:
            make_config(knobs)
        except UserError as error:
            raise UserError(f"trial {trial_id}: {error}") from None
        trial = PlannedTrial(trial_id, knobs)
        if trial.workers > 1 and 0 < sweep.gpus_per_worker < 1:
            raise UserError(f"trial {trial_id}: {trial.workers} DDP workers cannot share fractions of GPUs "
                            f"(resources.gpu {sweep.gpus_per_worker:g}; NCCL refuses one GPU twice); give each worker gpu: 1")
        planned.append(trial)
    return planned


def describe(sweep: Sweep, planned: list[PlannedTrial]) -> str:
    """The expanded trial table and the resources it asks for (``--dry-run``)."""
    axes = list(sweep.axes)
    widths = {a: max(len(a), *(len(str(p.knobs.get(a, "-"))) for p in planned)) for a in axes}
    workers = sorted({p.workers for p in planned})
    lines = [f"sweep {sweep.name}: {len(planned)} trials of {'/'.join(map(str, workers))} worker(s), each worker "
             f"{sweep.cpus_per_worker:g} CPU and {sweep.gpus_per_worker:g} GPU; fixed: "
             + ", ".join(f"{k}={v}" for k, v in sweep.trial.items())]
    lines.append("  ".join(a.ljust(widths[a]) for a in axes))
    lines += ["  ".join(str(p.knobs.get(a, "-")).ljust(widths[a]) for a in axes) for p in planned]
    total_workers = sum(p.workers for p in planned)
    lines.append(f"in all: {sweep.cpus_per_worker * total_workers:g} CPU-trials, {sweep.gpus_per_worker * total_workers:g} "
                 f"GPU-trials; at most {sweep.max_concurrent or 'as many as fit'} at once, {sweep.max_failures} retries each")
    return "\n".join(lines)


# --- the Ray side --------------------------------------------------------------------------------


def trainable(config: dict, planned_by_id: dict, worker_resources: dict, train_storage: str) -> None:
    """A Tune function trainable: one trial, reporting each epoch with a checkpoint, then its result.

    Tune's config holds only the trial id, so that its live table names each trial readably; the
    planned trials come with ``tune.with_parameters``. A DDP trial drives a Ray Train run instead of training here.
    """
    from ray import tune

    trial_id = config["trial_id"]
    trial = planned_by_id[trial_id]
    if trial.workers > 1:
        _drive_ddp_trial(trial, worker_resources, train_storage)
        return

    def report(metrics: dict, checkpoint_folder: str | None = None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_folder) if checkpoint_folder else None)

    _run_and_report(trial_id, make_config(trial.knobs), tune.get_checkpoint(), report, saves_checkpoints=True)


def _run_and_report(trial_id: str, cfg: TrialConfig, checkpoint, report, saves_checkpoints: bool) -> None:
    """``run_trial`` inside Ray: resume from ``checkpoint``, then ``report(metrics, checkpoint_folder)``
    every epoch (with the state when ``saves_checkpoints``) and once more with the whole result."""
    import torch

    from byol_bench.train import run_trial

    resume = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = torch.load(Path(folder) / "state.pt", weights_only=False)

    def report_epoch(row: dict, state: dict) -> None:
        metrics = {k: v for k, v in row.items() if v is not None}
        if not saves_checkpoints:
            report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / "state.pt")
            report(metrics, folder)

    result = run_trial(cfg, on_epoch=report_epoch, resume=resume,
                       log=lambda line: print(f"{trial_id}: {line}", file=sys.stderr, flush=True))
    summary = {k: v for k, v in result["metrics"].items() if v is not None}
    report({**summary, "status": result["status"], "result_json": json.dumps(result, default=str)})


def _drive_ddp_trial(trial: PlannedTrial, worker_resources: dict, train_storage: str) -> None:
    """Run a trial as a Ray Train DDP run of ``workers`` ranks; their reports reach Tune as this trial's.

    Its checkpoints live in Ray Train's run folder (one per trial, named after it), so a retried or
    resumed trial's new TorchTrainer continues from the last one.
    """
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        ddp_worker, train_loop_config={"trial_id": trial.trial_id, "knobs": trial.knobs},
        scaling_config=ray.train.ScalingConfig(
            num_workers=trial.workers, use_gpu=worker_resources["gpu"] > 0,
            resources_per_worker={"CPU": worker_resources["cpu"], "GPU": worker_resources["gpu"]}),
        run_config=ray.train.RunConfig(
            name=_run_name(trial.trial_id), storage_path=train_storage, callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),  # not every report in full, per rank
    ).fit()


def _run_name(trial_id: str) -> str:
    """A folder name for a trial's Ray Train run: readable, and unique by a hash of the whole id."""
    readable = re.sub(r"[^\w.=-]+", "_", trial_id)[:80]
    return f"{readable}-{hashlib.sha1(trial_id.encode()).hexdigest()[:8]}"


def ddp_worker(loop_config: dict) -> None:
    """One rank of a DDP trial (Ray Train has set up the process group and the rank's device)."""
    import logging

    import ray.train
    from ray.train.torch import get_device

    logging.getLogger().setLevel(logging.WARNING)  # Ray Train would log every report in full, from every rank
    cfg = make_config({**loop_config["knobs"], "device": str(get_device())})

    def report(metrics: dict, checkpoint_folder: str | None = None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_folder) if checkpoint_folder else None)

    # Every rank reports (Ray Train waits for all of them, and passes rank 0's metrics on); rank 0 alone checkpoints.
    _run_and_report(loop_config["trial_id"], cfg, ray.train.get_checkpoint(), report,
                    saves_checkpoints=ray.train.get_context().get_world_rank() == 0)


def _check_checkpoints(folder: Path) -> None:
    """Every trial's newest checkpoint (Tune's, or Ray Train's for a DDP trial) must be whole before a
    resume continues from it.

    torch.save writes a zip archive, so a CRC test finds a truncated or damaged file without loading it.
    """
    for run in sorted({checkpoint.parent for checkpoint in folder.rglob("checkpoint_*") if checkpoint.is_dir()}):
        state = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())[-1] / "state.pt"
        try:
            with zipfile.ZipFile(state) as archive:
                damaged = archive.testzip()
        except (OSError, zipfile.BadZipFile):
            damaged = state.name
        if damaged is not None:
            raise UserError(f"checkpoint {state} is corrupt; restore it from a backup, or rerun the sweep "
                            "into a new --results-dir (the finished trials' rows are in trials.parquet)")


def _check_reachable(address: str) -> None:
    """A TCP look at host:port first: ray.init retries an unreachable address for minutes."""
    if address == "auto":
        return  # Ray finds the local cluster itself, or says at once that there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
        raise UserError(f"cannot reach the Ray cluster at --address {address} ({reason}); check host and port "
                        "(ray://HOST:10001 or HOST:6379), or leave --address out for a local cluster") from None


def _start_ray(address: str | None):
    for variable, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"),
                            ("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")):
        os.environ.setdefault(variable, value)
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster needs no token
    else:
        _check_reachable(address)
    import ray

    if ray.is_initialized():  # e.g. a test session's cluster
        return ray, False
    try:
        if address is None:
            ray.init(include_dashboard=False, logging_level="WARNING")
        else:
            ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot connect to the Ray cluster at --address {address} ({reason}); "
                        "start it with 'ray start --head' or leave --address out for a local cluster") from None
    return ray, True


def _check_resources(ray, sweep: Sweep, workers: int) -> dict:
    """The largest trial (``workers`` workers) must fit the cluster: Ray would leave it pending forever."""
    available = ray.cluster_resources()
    gpus, cpus = sweep.gpus_per_worker * workers, sweep.cpus_per_worker * workers
    if gpus > available.get("GPU", 0):
        raise UserError(f"the sweep asks for {gpus:g} GPU per trial ({workers} worker(s) x {sweep.gpus_per_worker:g}) but "
                        f"the Ray cluster has {available.get('GPU', 0):g}; lower resources.gpu or workers (0 GPUs: CPU), "
                        "or connect to a larger GPU cluster with --address")
    if cpus > available.get("CPU", 0):
        raise UserError(f"the sweep asks for {cpus:g} CPUs per trial ({workers} worker(s) x {sweep.cpus_per_worker:g}) "
                        f"but the Ray cluster has {available.get('CPU', 0):g}; lower resources.cpu or workers")
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if not any(node.get("CPU", 0) >= sweep.cpus_per_worker and node.get("GPU", 0) >= sweep.gpus_per_worker for node in nodes):
        largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
        raise UserError(f"no Ray node holds one worker's {sweep.cpus_per_worker:g} CPU and {sweep.gpus_per_worker:g} GPU "
                        f"(the largest has {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower resources.cpu/gpu")
    return available


def _concurrency(sweep: Sweep, workers: int, available: dict, requested: int | None) -> int | None:
    """How many trials may run at once, the largest having ``workers`` workers. DDP trials' drivers hold no
    CPU or GPU, so Tune would start them all and their Train runs would wait for workers: cap them by what
    the cluster holds (Ray's advice)."""
    if workers == 1:
        return requested
    fits = [available.get("CPU", 0) / (sweep.cpus_per_worker * workers)] if sweep.cpus_per_worker else []
    fits += [available.get("GPU", 0) / (sweep.gpus_per_worker * workers)] if sweep.gpus_per_worker else []
    limit = max(1, int(min(fits))) if fits else None
    return min(limit, requested) if limit and requested else limit or requested


def _collect(planned: list[PlannedTrial], grid) -> tuple[list[dict], list[dict]]:
    """Rows for every planned trial from Tune's results: ok/diverged, failed with its error, or incomplete."""
    by_id = {result.config["trial_id"]: result for result in grid if result.config}
    trials, epochs = [], []
    for plan in planned:
        result = by_id.get(plan.trial_id)
        metrics = (result.metrics or {}) if result is not None else {}
        if result is not None and result.error is not None:
            message = str(result.error).strip().splitlines()
            trials.append(trial_row(plan.trial_id, plan.resolved, "failed", error=" | ".join(message[-3:])[:2000]))
        elif "result_json" in metrics:
            outcome = json.loads(metrics["result_json"])
            trials.append(trial_row(plan.trial_id, plan.resolved, outcome["status"], outcome))
            epochs += epoch_rows(plan.trial_id, outcome)
        else:
            trials.append(trial_row(plan.trial_id, plan.resolved, "incomplete"))
    return trials, epochs


def _storage_holds(uri: str) -> bool:
    """Whether an object-store (or file://) URI names something that exists."""
    import pyarrow.fs

    try:
        filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
        return filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"--storage {uri}: cannot open it ({reason}); give a URI such as s3://bucket/path, "
                        "gs://bucket/path or file:///shared/path") from None


def run_sweep(sweep: Sweep, results_dir: Path, address: str | None = None, resume: bool = False,
              max_concurrent: int | None = None, storage: str | None = None) -> int:
    """Run (or resume) a sweep, write its tables and manifest; returns the command's exit code.

    Ray's state (Tune's trial folders, checkpoints, DDP trials' Ray Train runs) goes to
    ``<storage>/<sweep>/`` when ``storage`` (a URI every node can reach) is given, else into the results
    folder; the tables, manifest and report always go to ``results_dir/<sweep>/``.
    """
    planned = expand(sweep)
    folder = (results_dir / sweep.name).resolve()
    manifest_path = folder / "manifest.json"
    ray_storage = f"{storage.rstrip('/')}/{sweep.name}" if storage else str(folder)
    grid_ids = [p.trial_id for p in planned]
    check_writable(folder, "results folder", "pass --results-dir")
    holds_sweep = _storage_holds(f"{ray_storage}/{TUNE_FOLDER}") if storage else (folder / TUNE_FOLDER).is_dir()
    if resume:
        previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        if not holds_sweep and previous.get("storage", ray_storage) != ray_storage:
            raise UserError(f"--resume: this sweep's Ray state is at {previous['storage']}; pass the --storage it ran with")
        if not holds_sweep:
            raise UserError(f"--resume: {ray_storage} holds no sweep to resume; run without --resume first")
        if not storage:
            _check_checkpoints(folder)
        if previous.get("grid") and [t["trial_id"] for t in previous["grid"]] != grid_ids:
            raise UserError(f"--resume: {folder} belongs to a sweep with another grid; "
                            "resume with the same sweep file, or pass --results-dir to start a new one")
    elif (folder.exists() and any(folder.iterdir())) or holds_sweep:
        raise UserError(f"{ray_storage if holds_sweep else folder} already holds results; "
                        "pass --resume to continue that sweep, or --results-dir (and --storage) to write elsewhere")

    if not storage:  # local state is cheap to save: every 2 s instead of every 10+, so that a driver killed
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")  # outright loses at most that much recorded progress
    ray, started_here = _start_ray(address)
    from ray import tune

    try:
        largest = max(p.workers for p in planned)
        cluster = _check_resources(ray, sweep, largest)
        manifest = {
            "sweep": sweep.name, "description": sweep.description, "sweep_file": sweep.source,
            "axes": list(sweep.axes), "fixed": sweep.trial, "method_overrides": sweep.method_overrides, "resources": sweep.resources, "anchors": sweep.anchors,
            "grid": [{"trial_id": p.trial_id, "knobs": p.knobs} for p in planned],
            "cluster_resources": cluster, "address": address or "local", "storage": ray_storage,
            "git_revision": git_revision(), "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None, "complete": False,
        }
        if resume:  # keep the first start; list every resumption
            manifest.update(started=previous.get("started", manifest["started"]),
                            resumed=[*previous.get("resumed", []), manifest["started"]])
        write_json(manifest_path, manifest)
        experiment = f"{ray_storage}/{TUNE_FOLDER}"
        planned_by_id = {p.trial_id: p for p in planned}
        one_worker = tune.PlacementGroupFactory([{"CPU": sweep.cpus_per_worker, "GPU": sweep.gpus_per_worker}])
        ddp_driver = tune.PlacementGroupFactory([{"CPU": 0, "memory": DRIVER_MEMORY}])
        runnable = tune.with_resources(
            tune.with_parameters(trainable, planned_by_id=planned_by_id, worker_resources=sweep.resources,
                                 train_storage=f"{ray_storage}/{TRAIN_FOLDER}"),
            lambda config: ddp_driver if planned_by_id[config["trial_id"]].workers > 1 else one_worker)
        if resume and tune.Tuner.can_restore(experiment):
            tuner = tune.Tuner.restore(experiment, trainable=runnable, resume_errored=True)
        else:
            tuner = tune.Tuner(
                runnable,
                param_space={"trial_id": tune.grid_search(grid_ids)},
                tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=_concurrency(
                    sweep, largest, cluster, max_concurrent or sweep.max_concurrent)),
                run_config=tune.RunConfig(
                    name=TUNE_FOLDER, storage_path=ray_storage, verbose=1,
                    failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
            )
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    trials, epochs = _collect(planned, grid)
    trial_table, _ = write_tables(folder, trials, epochs)
    counts = trial_table["status"].value_counts().to_dict()
    manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), complete=not counts.get("incomplete"))
    write_json(manifest_path, manifest)
    print(summary(trial_table))
    print(f"results: {folder}/trials.parquet, epochs.parquet, manifest.json")
    from byol_bench.report import write_report  # plotting libraries load only once there is something to plot

    print(f"report: {write_report(folder)}")
    if counts.get("incomplete"):
        print(f"sweep interrupted: {counts['incomplete']} of {len(planned)} trials unfinished; continue with "
              f"'byol-bench sweep {sweep.path} --results-dir {results_dir}" + (f" --storage {storage}" if storage else "")
              + " --resume'", file=sys.stderr)
        return 130
    return 0 if counts.get("ok", 0) == len(planned) else 1
