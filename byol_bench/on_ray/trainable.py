"""One sweep trial inside Ray: a Tune function trainable that runs ``train.run_trial`` and reports every epoch
with a checkpoint, so that a retried or resumed trial continues from its newest whole one; a trial with
``workers`` > 1 drives a Ray Train TorchTrainer instead, whose workers each run ``run_trial`` as one rank and
report through Tune. ``sweep`` plans the Tune run; ``tuning``'s search trials report the same way.
"""

from __future__ import annotations

import errno
import hashlib
import pickle
import re
import sys
import tempfile
import zipfile
from pathlib import Path

from byol_bench.config import TrialConfig, make_config
from byol_bench.on_ray.failpoints import failpoint
from byol_bench.plan.sweep_file import PlannedTrial
from byol_bench.protocol import floor_setting
from byol_bench.results.tables import megabytes
from byol_bench.results.weights import WEIGHTS_FILE
from byol_bench.trial.result import values


def trainable(config: dict, planned_by_id: dict, worker_resources: dict, train_storage: str, weights_storage: str,
              floors: dict) -> None:
    """A Tune function trainable: one trial, reporting each epoch with a checkpoint, then its result.

    The trial is looked up by the id in Tune's config (its knobs stand beside the id for the trackers);
    the planned trials come with ``tune.with_parameters``. A DDP trial drives a Ray Train run instead of
    training here. The final backbone goes to ``weights_storage`` (the sweep's storage, which every node reaches).
    """
    from ray import tune

    trial_id = config["trial_id"]
    trial = planned_by_id[trial_id]
    cfg = make_config(trial.knobs)
    trial_floors = floors.get(floor_setting(cfg))
    weights_to = f"{weights_storage}/{run_name(trial_id)}/{WEIGHTS_FILE}"
    if trial.workers > 1:
        _drive_ddp_trial(trial, trial_floors, worker_resources, train_storage, weights_to)
        return

    run_and_report(trial_id, cfg, trial_floors, tune.get_checkpoint(), tune_report, saves_checkpoints=True,
                   weights_to=weights_to)


def tune_report(metrics: dict, checkpoint_folder: str | None = None) -> None:
    """What a trial reports to Tune: an epoch's metrics, with its checkpoint when there is one."""
    from ray import tune

    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_folder) if checkpoint_folder else None)


def resume_point(checkpoint, notes: list[str], log):
    """The ``train.Checkpoint`` to continue from: the newest whole one of a Ray checkpoint (``newest_whole``;
    what became of damaged ones logged and kept in ``notes``), or None: start over."""
    if checkpoint is None:
        return None
    resume = newest_whole(checkpoint, notes.append)
    for note in notes:
        log(note)
    return resume


def epoch_reporter(trial: str, report, saves_checkpoints: bool, notes: list[str]):
    """``on_epoch`` for ``trial`` inside Ray: ``report(metrics, checkpoint_folder)``, with the state when
    ``saves_checkpoints``, and with the first epoch the ``notes`` on its resume point (for the driver's console);
    then the ``after_epoch`` failpoint."""

    def report_epoch(row: dict, trial_checkpoint) -> None:
        metrics = {k: v for k, v in row.items() if v is not None}
        if notes:
            metrics["note"] = "; ".join(notes)
            notes.clear()
        if saves_checkpoints:
            _report_with_checkpoint(report, metrics, trial_checkpoint)
        else:
            report(metrics)
        failpoint("after_epoch", trial=trial, epoch=row["epoch"], first_run=not trial_checkpoint.state.restarts)

    return report_epoch


def _report_with_checkpoint(report, metrics: dict, trial_checkpoint) -> None:
    """``report(metrics, checkpoint_folder)`` with ``trial_checkpoint`` saved in a folder of its own."""
    import torch

    with tempfile.TemporaryDirectory() as folder:
        torch.save(trial_checkpoint, Path(folder) / "state.pt")
        try:
            report(metrics, folder)
        except OSError as error:  # Ray copying it into the sweep's storage
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            size = megabytes((Path(folder) / "state.pt").stat().st_size)
            raise OSError(error.errno, f"no space left to save epoch {metrics['epoch']}'s checkpoint ({size}) "
                                       "into the sweep's storage") from None


def log_as(name: str):
    return lambda line: print(f"{name}: {line}", file=sys.stderr, flush=True)


def run_and_report(trial_id: str, cfg: TrialConfig, floors: dict | None, checkpoint, report, saves_checkpoints: bool,
                   weights_to: str) -> None:
    """``run_trial`` inside Ray (with the sweep's ``floors`` for it, if measured): resume from ``checkpoint``, then ``report(metrics, checkpoint_folder)``
    every epoch (with the state when ``saves_checkpoints``) and once more with the whole result; the final backbone
    written to ``weights_to`` (a path or URI)."""
    from byol_bench.trial.run import run_trial
    from byol_bench.trial.weights import backbone_bytes

    log, notes = log_as(trial_id), []
    resume = resume_point(checkpoint, notes, log)
    on_epoch = epoch_reporter(trial_id, report, saves_checkpoints, notes)
    result = run_trial(cfg, floors=floors, on_epoch=on_epoch, resume=resume, log=log,
                       save_backbone=lambda backbone: write_whole(weights_to, backbone_bytes(backbone, {"trial": trial_id})))
    summary = {k: v for k, v in values(result.metrics).items() if v is not None}
    report({**summary, "status": result.status, "result_json": result.to_json()})


def write_whole(uri: str, content: bytes) -> None:
    """``content`` at ``uri`` (a local path, file://, s3://, gs://, ...), under a temporary name until it is whole."""
    import pyarrow.fs

    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(f"{path}.partial") as stream:
        stream.write(content)
    filesystem.move(f"{path}.partial", path)


def newest_whole(checkpoint, say):
    """The ``train.Checkpoint`` in ``checkpoint`` (Ray's, of Tune or Ray Train) or, where that file is truncated
    or damaged (a full disk, a crash as it was written), in the newest whole one before it, saying so; None
    (start over) when none is whole. torch.save writes a zip archive: a CRC test finds the damage."""
    import pyarrow.fs

    from byol_bench.trial.state import load_checkpoint

    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    found = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    names = sorted((info.base_name for info in found if info.type == pyarrow.fs.FileType.Directory
                    and info.base_name.startswith("checkpoint_") and info.base_name <= name), reverse=True)
    for earlier in names:
        with type(checkpoint)(f"{parent}/{earlier}", filesystem=checkpoint.filesystem).as_directory() as folder:
            try:
                with zipfile.ZipFile(Path(folder) / "state.pt") as archive:
                    if archive.testzip() is None:
                        return load_checkpoint(Path(folder) / "state.pt")
            except (OSError, zipfile.BadZipFile, RuntimeError, EOFError, pickle.UnpicklingError):  # refused: not ours
                pass
        say(f"checkpoint {parent}/{earlier} is truncated or damaged; "
            + ("falling back to the one before it" if earlier != names[-1] else "starting over from epoch 1"))
    if not names:
        say(f"checkpoint {checkpoint.path} is missing; starting over from epoch 1")
    return None


def _drive_ddp_trial(trial: PlannedTrial, floors: dict | None, worker_resources: dict, train_storage: str,
                     weights_to: str) -> None:
    """Run a trial as a Ray Train DDP run of ``workers`` ranks; their reports reach Tune as this trial's.

    Its checkpoints live in Ray Train's run folder (one per trial, named after it), so a retried or
    resumed trial's new TorchTrainer continues from the last one.
    """
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(
        ddp_worker, train_loop_config={"trial_id": trial.trial_id, "knobs": trial.knobs, "floors": floors,
                                       "weights_to": weights_to},
        scaling_config=ray.train.ScalingConfig(
            num_workers=trial.workers, use_gpu=worker_resources["gpu"] > 0,
            resources_per_worker={"CPU": worker_resources["cpu"], "GPU": worker_resources["gpu"]}),
        run_config=ray.train.RunConfig(
            name=run_name(trial.trial_id), storage_path=train_storage, callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),  # not every report in full, per rank
    ).fit()


def run_name(trial_id: str) -> str:
    """A folder name for a trial (Tune's) and its Ray Train run: readable, and unique by a hash of the whole id."""
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
    run_and_report(loop_config["trial_id"], cfg, loop_config["floors"], ray.train.get_checkpoint(), report,
                   saves_checkpoints=ray.train.get_context().get_world_rank() == 0, weights_to=loop_config["weights_to"])
