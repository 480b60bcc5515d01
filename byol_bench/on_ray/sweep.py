"""Runs a sweep on Ray Tune, beside ``trainable`` (one trial inside Ray), ``tuning`` (a tuned comparison) and
``cluster`` (starting Ray, sizing the work to it) in the Ray edge, the only folder that imports ray.

It checks the results folder and the cluster, measures the floors once per setting, runs the grid of
``trainable.trainable`` (a DDP trial's driver on the head node), guards the disk while it runs, and when
the grid is done turns the rows into the sweep's tables, manifest and report.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from byol_bench.config import make_config
from byol_bench.errors import UserError
from byol_bench.on_ray.cluster import check_resources, concurrency_limit, start_ray, trials_that_fit
from byol_bench.on_ray.trackers import Tracking, check_tracking, param_space
from byol_bench.on_ray.trainable import run_name, trainable
from byol_bench.plan.sweep_file import PlannedTrial, Sweep, expand, run_order
from byol_bench.plan.tune_file import SEARCH_FILES, SEARCH_RECORD
from byol_bench.protocol import floor_setting
from byol_bench.results.lock import LOCK_FILE, hold_folder
from byol_bench.results.tables import (DiskFull, check_writable, disk_full, embedding_rows, epoch_rows, megabytes,
                                       summary, trial_row, write_json, write_tables)
from byol_bench.trial.provenance import git_revision, plugins_used, versions
from byol_bench.results.weights import CARD_STEM, WEIGHTS_FILE, WEIGHTS_FOLDER, write_card
from byol_bench.trial.result import TrialResult

TUNE_FOLDER = "tune"  # Ray Tune's experiment folder inside results/<sweep>/
TRAIN_FOLDER = "train"  # Ray Train's runs (DDP trials' checkpoints) inside results/<sweep>/
ROOM_MARGIN = 4 * 2**20  # what a sweep's disk keeps free beyond its checkpoints: Ray's experiment state, the tables
HEAD_NODE_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource (Ray Train pins actors with it)
DRIVER_MEMORY = 512 * 2**20  # what a DDP trial's driver reserves: it only waits on its workers, which hold the CPUs/GPUs


def _shared_floors(ray, sweep: Sweep, planned: list[PlannedTrial]) -> dict[tuple, dict]:
    """The floors of every distinct floor setting among the planned trials, each measured once, as a Ray
    task holding one worker's resources, before the trials start (they would otherwise each measure
    the same numbers). A setting whose measurement fails is left out: its trials measure it themselves
    and record the failure."""
    from byol_bench.trial.run import measure_floors

    configs = {}
    for trial in planned:
        cfg = make_config(trial.knobs)
        configs.setdefault(floor_setting(cfg), cfg)
    print(f"measuring the floors (random-init backbone, raw pixels) of {len(configs)} setting(s), once for all "
          f"{len(planned)} trials", file=sys.stderr, flush=True)
    task = ray.remote(num_cpus=sweep.cpus_per_worker, num_gpus=sweep.gpus_per_worker, max_retries=0)(measure_floors)
    pending = {setting: task.remote(cfg) for setting, cfg in configs.items()}
    floors = {}
    for setting, reference in pending.items():
        try:
            floors[setting] = ray.get(reference)
        except ray.exceptions.RayError:
            pass
    return floors


def _check_tune_state(experiment: Path) -> None:
    """Tune's newest experiment state must be whole for a resume: from one cut short (its disk filled, or the
    machine failed, as Ray saved it in place) Tune would start the grid anew in the old trial folders."""
    for state in sorted(experiment.glob("experiment_state-*.json"))[-1:]:
        try:
            json.loads(state.read_bytes())
        except ValueError:  # UnicodeDecodeError included
            raise UserError(f"--resume: Ray Tune's state {state} is cut short, so the sweep cannot be resumed; run it "
                            f"again into a new --results-dir (the finished trials' results are in {experiment}/*/result.json)") from None


def _collect(planned: list[PlannedTrial], grid, folder: Path, ray_storage: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Rows for every planned trial from Tune's results (ok/diverged, failed with its error, or incomplete), their
    epochs' and their embedding maps' rows; each finished trial's weights (in ``ray_storage``) kept in ``folder``
    with a model card."""
    by_id = {result.config["trial_id"]: result for result in grid if result.config}
    trials, epochs, embeddings = [], [], []
    for plan in planned:
        result = by_id.get(plan.trial_id)
        metrics = (result.metrics or {}) if result is not None else {}
        if result is not None and result.error is not None:
            trials.append(trial_row(plan.trial_id, plan.resolved, "failed", error=last_lines(result.error)))
        elif "result_json" in metrics:
            outcome = TrialResult.from_json(metrics["result_json"])
            trials.append(trial_row(plan.trial_id, plan.resolved, outcome.status, outcome))
            trials[-1]["weights"] = _kept_weights(plan.trial_id, outcome, folder, ray_storage)
            epochs += epoch_rows(plan.trial_id, outcome)
            embeddings += embedding_rows(plan.trial_id, outcome)
        else:
            trials.append(trial_row(plan.trial_id, plan.resolved, "incomplete"))
    return trials, epochs, embeddings


def _kept_weights(trial_id: str, result: TrialResult, folder: Path, ray_storage: str) -> str | None:
    """A trial's backbone under ``folder``/weights/<trial>/ (copied there from a remote storage), with its model card
    beside it: the path relative to ``folder``, or None where the trial saved none (save_weights false)."""
    import pyarrow.fs

    relative = f"{WEIGHTS_FOLDER}/{run_name(trial_id)}/{WEIGHTS_FILE}"
    local = folder / relative
    if "://" in ray_storage and not local.exists():
        filesystem, path = pyarrow.fs.FileSystem.from_uri(f"{ray_storage}/{relative}")
        if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            return None
        local.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(path, str(local.resolve()), source_filesystem=filesystem)
    if not local.exists():
        return None
    write_card(result, trial_id, local, local.with_name(CARD_STEM))
    return relative


def last_lines(error: Exception) -> str:
    """A trial's error as a table cell: its last three lines."""
    return " | ".join(str(error).strip().splitlines()[-3:])[:2000]


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


def _check_results_folder(sweep: Sweep, folder: Path, ray_storage: str, storage: str | None, resume: bool,
                          grid_ids: list[str]) -> dict:
    """Refuse to mix two sweeps in one folder or storage; for ``resume``, check that the sweep there is this
    one and its checkpoints are whole. Returns the manifest of the run being resumed (or {})."""
    holds_sweep = _storage_holds(f"{ray_storage}/{TUNE_FOLDER}") if storage else (folder / TUNE_FOLDER).is_dir()
    manifest_path = folder / "manifest.json"
    if not resume:  # a tuned comparison's final runs go in beside its search
        if any(path.name not in (*SEARCH_FILES, LOCK_FILE) for path in folder.iterdir()) or holds_sweep:
            raise UserError(f"{ray_storage if holds_sweep else folder} already holds results; "
                            "pass --resume to continue that sweep, or --results-dir (and --storage) to write elsewhere")
        return {}
    previous = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if not holds_sweep and previous.get("storage", ray_storage) != ray_storage:
        raise UserError(f"--resume: this sweep's Ray state is at {previous['storage']}; pass the --storage it ran with")
    if not holds_sweep:
        raise UserError(f"--resume: {ray_storage} holds no sweep to resume; run without --resume first")
    if not storage:
        _check_tune_state(folder / TUNE_FOLDER)
    if previous.get("grid") and [t["trial_id"] for t in previous["grid"]] != grid_ids:
        raise UserError(f"--resume: {folder} belongs to a sweep with another grid; "
                        "resume with the same sweep file, or pass --results-dir to start a new one")
    return previous


def _manifest(sweep: Sweep, planned: list[PlannedTrial], cluster: dict, address: str | None, ray_storage: str,
              previous: dict) -> dict:
    """The sweep's provenance: the file as given, the expanded grid, the cluster, versions and times."""
    manifest = {
        "sweep": sweep.name, "description": sweep.description, "sweep_file": sweep.source,
        "axes": list(sweep.axes), "fixed": sweep.trial, "method_overrides": sweep.method_overrides,
        "backbone_overrides": sweep.backbone_overrides,
        "resources": sweep.resources, "anchors": sweep.anchors,
        "grid": [{"trial_id": p.trial_id, "knobs": p.knobs} for p in planned],
        "cluster_resources": cluster, "address": address or "local", "storage": ray_storage,
        "git_revision": git_revision(), "versions": versions(),
        "plugins": {what: origin for p in planned for what, origin in
                    plugins_used(p.resolved["method"], p.resolved["backbone"]).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "finished": None, "complete": False,
    }
    if previous:  # a resumed sweep keeps its first start and lists every resumption
        manifest.update(started=previous.get("started", manifest["started"]),
                        resumed=[*previous.get("resumed", []), manifest["started"]])
    return manifest


TUNE_STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "running", "TERMINATED": "done", "ERROR": "failed"}


def _progress_callback(planned: list[PlannedTrial]):
    """A Tune callback that prints the sweep's progress (``progress.SweepProgress``). It travels with the
    Tuner's pickled state: a resumed sweep restores it, and it starts its clock anew."""
    from ray import tune

    from byol_bench.on_ray.progress import SweepProgress

    trials = {p.trial_id: p.resolved for p in planned}

    class Progress(tune.Callback):
        def setup(self, **info) -> None:
            self.progress = SweepProgress(trials)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.progress.result(trial.config["trial_id"], result)

        def on_trial_recover(self, iteration, trials, trial, **info) -> None:
            self.progress.retry(trial.config["trial_id"], trial.num_failures)

        def on_step_end(self, iteration, trials, **info) -> None:
            self.progress.tick({trial.config["trial_id"]: TUNE_STATUS.get(trial.status, "pending") for trial in trials})

    return Progress()


def _disk_guard(folder: Path, slots: int):
    """A Tune callback that stops the sweep as Ctrl-C does (resumably) once the disk of its results ``folder``
    lacks ``_room_needed`` for ``slots`` trials at once: Ray writes checkpoints and its experiment state in place, so a disk that fills under
    it leaves them cut short, and Tune cannot resume from a cut experiment state."""
    from ray import tune

    class DiskGuard(tune.Callback):
        def setup(self, **info) -> None:
            self.largest = _largest_checkpoint(folder)  # a resumed sweep's, then each new one's
            self.stopping = False  # a second SIGINT would no longer reach Tune's handler, which stops gracefully once

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
            self.largest = max(self.largest, (Path(checkpoint.path) / "state.pt").stat().st_size)

        def on_step_end(self, iteration, trials, **info) -> None:
            free, needed = shutil.disk_usage(folder).free, _room_needed(self.largest, slots)
            if free < needed and not self.stopping:
                self.stopping = True
                print(f"the disk holding {folder} has {megabytes(free)} free, less than the {megabytes(needed)} the sweep "
                      "needs: stopping it while Ray's state can still be saved", file=sys.stderr, flush=True)
                signal.raise_signal(signal.SIGINT)  # Tune's own handler: stop, save the experiment state, return

    return DiskGuard()


def _tuner(sweep: Sweep, planned: list[PlannedTrial], floors: dict, ray_storage: str, resume: bool,
           max_concurrent: int | None, tracking: Tracking, verbose: bool, guards: list):
    """Ray Tune's Tuner over the planned trials' ids (their knobs beside them, for the trackers), or the one
    a resumed sweep left behind, which keeps the trackers and ``guards`` it started with."""
    from ray import tune

    planned_by_id = {p.trial_id: p for p in planned}
    one_worker = tune.PlacementGroupFactory([{"CPU": sweep.cpus_per_worker, "GPU": sweep.gpus_per_worker}])
    # A DDP trial's driver, and with it Ray Train's controller, on the head node: a lost worker node then takes
    # ranks with it, never the trial's coordinator (whose loss left its run's CPUs held in Ray 2.60).
    ddp_driver = tune.PlacementGroupFactory([{"CPU": 0, "memory": DRIVER_MEMORY, HEAD_NODE_RESOURCE: 0.001}])
    runnable = tune.with_resources(
        tune.with_parameters(trainable, planned_by_id=planned_by_id, worker_resources=sweep.resources,
                             train_storage=f"{ray_storage}/{TRAIN_FOLDER}", floors=floors,
                             weights_storage=f"{ray_storage if '://' in ray_storage else Path(ray_storage).resolve()}/{WEIGHTS_FOLDER}"),
        lambda config: ddp_driver if planned_by_id[config["trial_id"]].workers > 1 else one_worker)
    experiment = f"{ray_storage}/{TUNE_FOLDER}"
    if resume and tune.Tuner.can_restore(experiment):
        return tune.Tuner.restore(experiment, trainable=runnable, resume_errored=True)
    return tune.Tuner(
        runnable,
        param_space=param_space(run_order(planned)),
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=max_concurrent,
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=TUNE_FOLDER, storage_path=ray_storage, verbose=1 if verbose else 0,  # 1: Tune's boxed tables
            callbacks=[_progress_callback(planned), *tracking.callbacks(sweep.name), *guards],
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )


def _trial_name(trial) -> str:
    """A trial's name in Tune's and the trackers' views (MLflow and W&B runs): its id in the tables."""
    return trial.config["trial_id"]


def _trial_dirname(trial) -> str:
    return run_name(trial.config["trial_id"])


def run_sweep(sweep: Sweep, results_dir: Path, address: str | None = None, resume: bool = False,
              max_concurrent: int | None = None, storage: str | None = None, track: list[str] | None = None,
              tracking_uri: str | None = None, verbose: bool = False, planned: list[PlannedTrial] | None = None) -> int:
    """Run (or resume) a sweep, write its tables, manifest and report; returns the command's exit code.

    Ray's state (Tune's trial folders, checkpoints, DDP trials' Ray Train runs) goes to
    ``<storage>/<sweep>/`` when ``storage`` (a URI every node can reach) is given, else into the results
    folder; the tables, manifest and report always go to ``results_dir/<sweep>/``. The console shows one
    line per trial and epoch and a summary every half minute; ``verbose`` adds Tune's tables and every
    worker's own output. One sweep at a time runs in a results folder (``results.lock``). Every trial is logged
    to the trackers in ``track`` (``tracking.TRACKERS``), MLflow's to ``tracking_uri`` (default: a SQLite
    file in the results folder). ``planned``: the trials to run when the sweep's grid cannot express them
    (a tuned comparison's final runs); by default the grid's.
    """
    folder = (results_dir / sweep.name).resolve()
    check_writable(folder, "results folder", "pass --results-dir")
    with hold_folder(folder, "pass --results-dir to write elsewhere"):
        return _run_sweep(sweep, folder, results_dir, planned or expand(sweep), address, resume, max_concurrent, storage,
                          track, tracking_uri, verbose)


def _run_sweep(sweep: Sweep, folder: Path, results_dir: Path, planned: list[PlannedTrial], address: str | None, resume: bool,
               max_concurrent: int | None, storage: str | None, track: list[str] | None, tracking_uri: str | None,
               verbose: bool) -> int:
    """``run_sweep`` in its results ``folder``, which this process holds."""
    tracking = check_tracking(track or [], tracking_uri, folder)
    ray_storage = f"{storage.rstrip('/')}/{sweep.name}" if storage else str(folder)
    previous = _check_results_folder(sweep, folder, ray_storage, storage, resume, [p.trial_id for p in planned])
    if not storage:
        save_state_often()
    ray, started_here = start_ray(address, verbose)
    try:
        largest = max(p.workers for p in planned)
        cluster = check_resources(ray, sweep, largest)
        concurrency = concurrency_limit(sweep, largest, cluster, max_concurrent or sweep.max_concurrent)
        slots = min(n for n in (len(planned), concurrency, trials_that_fit(sweep, 1, cluster)) if n)  # trials at once
        try:
            # Resumed trials have their floors in their checkpoints.
            floors = {} if resume else _shared_floors(ray, sweep, planned)
        except KeyboardInterrupt:  # nothing written yet: the same command starts it again (a tune's, with --resume)
            print(f"sweep interrupted while measuring the floors, before any trial ran; start it again with "
                  f"'{_sweep_command(sweep, folder, results_dir, storage, resume=False)}'", file=sys.stderr)
            return 130
        manifest = _manifest(sweep, planned, cluster, address, ray_storage, previous)
        write_json(folder / "manifest.json", manifest)
        guards = [] if storage else [_disk_guard(folder, slots)]  # Ray's state in the results folder: watch its disk
        try:
            grid = _tuner(sweep, planned, floors, ray_storage, resume, concurrency, tracking, verbose, guards).fit()
        except Exception:
            if not storage:  # a full disk under Ray's state fails Tune in many ways
                _check_room(folder, slots, _sweep_command(sweep, folder, results_dir, storage))
            raise
    finally:
        if started_here:
            ray.shutdown()
    exit_code = _finish(sweep, planned, grid, folder, manifest, results_dir, storage, slots)
    for line in tracking.where(sweep.name, f"{ray_storage}/{TUNE_FOLDER}"):
        print(line)
    return exit_code


def _finish(sweep: Sweep, planned: list[PlannedTrial], grid, folder: Path, manifest: dict, results_dir: Path,
            storage: str | None, slots: int) -> int:
    """The sweep's tables, finished manifest and report; the exit code (130 when trials are unfinished). A sweep
    stopped for want of room (``_disk_guard``) writes nothing more: a resume writes it all."""
    trials, epochs, embeddings = _collect(planned, grid, folder, manifest["storage"])
    resume = _sweep_command(sweep, folder, results_dir, storage)
    if not storage and any(row["status"] == "incomplete" for row in trials):
        _check_room(folder, slots, resume)
    try:
        trial_table, _ = write_tables(folder, trials, epochs, embeddings)
        counts = trial_table["status"].value_counts().to_dict()
        manifest.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), complete=not counts.get("incomplete"))
        write_json(folder / "manifest.json", manifest)
        print(summary(trial_table, sweep.axes))
        from byol_bench.regression.history import record_sweep  # plotting libraries load only once there is something to plot
        from byol_bench.report import settings_summary, write_report

        print(f"per setting: mean [95% bootstrap interval over seeds]\n{settings_summary(folder)}")
        print(f"results: {folder}/trials.parquet, epochs.parquet, manifest.json")
        if manifest["complete"]:
            print(record_sweep(folder))
        print(f"report: {write_report(folder)}")
    except DiskFull as error:  # the finished trials are safe in Ray's state: a resume writes their rows
        raise _resumable(error, resume) from None
    if counts.get("incomplete"):
        print(f"sweep interrupted: {counts['incomplete']} of {len(planned)} trials unfinished; continue with '{resume}'",
              file=sys.stderr)
        return 130
    return 0 if counts.get("ok", 0) == len(planned) else 1


def _sweep_command(sweep: Sweep, folder: Path, results_dir: Path, storage: str | None, resume: bool = True) -> str:
    """The command that continues this sweep (``resume``) or starts it again; a tuned comparison's final sweep
    (its folder holds the search) is ``tune --resume``'s either way."""
    tuned = (folder / SEARCH_RECORD).is_file()
    return (f"byol-bench {'tune' if tuned else 'sweep'} {sweep.path} --results-dir {results_dir}"
            + (f" --storage {storage}" if storage else "") + (" --resume" if resume or tuned else ""))


def _resumable(error: DiskFull, resume: str) -> DiskFull:
    return DiskFull(f"{error} with '{resume}' (its finished trials are kept, not rerun)")


def _largest_checkpoint(folder: Path) -> int:
    return max((path.stat().st_size for path in folder.rglob("checkpoint_*/state.pt")), default=0)


def _room_needed(largest_checkpoint: int, slots: int) -> int:
    """The free space a sweep needs to go on: a new checkpoint (as large as the largest) beside the old one for
    each trial that may run at once, and ``ROOM_MARGIN``."""
    return 2 * largest_checkpoint * slots + ROOM_MARGIN


def _check_room(folder: Path, slots: int, resume: str) -> None:
    """A ``DiskFull`` naming ``resume`` when the disk of ``folder`` (the sweep's Ray state) lacks ``_room_needed``."""
    needed = _room_needed(_largest_checkpoint(folder), slots)
    if shutil.disk_usage(folder).free < needed:
        raise _resumable(disk_full(folder, f"{TUNE_FOLDER}/ (checkpoints and Ray's state)", needed), resume) from None


def save_state_often() -> None:
    """Tune's state saved every 2 s instead of every 10+ (it is local, so cheap): a driver killed outright
    loses at most that much recorded progress."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
