"""Runs a tuned comparison on Ray Tune (``byol-bench tune``): each method's search over its space, with the same
budget and ASHA on the validation kNN, then each method's chosen values (and defaults) over the final seeds as an
ordinary sweep (``sweep.run_sweep``) into the same results folder. Ray's other edge, beside ``sweep``."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from byol_bench.config import make_config
from byol_bench.errors import UserError
from byol_bench.on_ray.cluster import check_resources, start_ray
from byol_bench.on_ray.progress import search_line
from byol_bench.on_ray.sweep import TUNE_FOLDER, last_lines, run_sweep, save_state_often
from byol_bench.on_ray.trackers import check_tracking
from byol_bench.on_ray.trainable import epoch_reporter, log_as, resume_point, tune_report
from byol_bench.plan.tune_file import (SEARCH_FOLDER, SEARCH_RECORD, SEARCH_TABLE, Search, SearchRecord, best_trials,
                                       chosen, defaults, final_runs, search_knobs)
from byol_bench.results.lock import LOCK_FILE, hold_folder
from byol_bench.results.tables import check_writable, write_json, write_parquet


def search_trainable(config: dict, knobs: dict) -> None:
    """A Tune function trainable: one search trial (the sampled ``config`` over the method's search ``knobs``),
    reporting every epoch's row, its validation kNN monitor among them (ASHA's and the search's score), with a
    checkpoint."""
    from ray import tune

    from byol_bench.trial.run import run_search_trial

    log, notes = log_as("search"), []
    resume = resume_point(tune.get_checkpoint(), notes, log)
    on_epoch = epoch_reporter(tune.get_context().get_trial_name(), tune_report, True, notes)
    run_search_trial(make_config({**knobs, **config}), on_epoch=on_epoch, resume=resume, log=log)


def _algorithm_used(search: Search) -> str:
    """The search algorithm that runs: the one asked for, or random search where Optuna is asked for but is not
    installed (saying so)."""
    import importlib.util

    if search.algorithm == "optuna" and importlib.util.find_spec("optuna") is None:
        print("search: optuna is not installed (pip install 'byol-bench[tune]'); searching at random instead",
              file=sys.stderr, flush=True)
        return "random"
    return search.algorithm


def _search_algorithm(name: str, seed: int, max_concurrent: int | None):
    """Tune's search algorithm ``name``, seeded: Optuna's TPE sampler, or random sampling (which takes the
    concurrency limit itself: Tune applies its own max_concurrent_trials to a Searcher such as Optuna's only)."""
    if name == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study: the search prints its own
        return OptunaSearch(seed=seed)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent or 0)


def _search_space(space: dict) -> dict:
    from ray import tune

    made = {"loguniform": lambda values: tune.loguniform(*values), "uniform": lambda values: tune.uniform(*values),
            "choice": lambda values: tune.choice(list(values))}
    return {key: made[distribution.kind](distribution.values) for key, distribution in space.items()}


FIRST_TAG = {"optuna": 1, "random": 0}  # where each algorithm's count of trials (a trial's experiment tag) starts


def _search_number(trial, algorithm: str) -> int:
    """A search trial's number within its method's search, from 1: the count at the start of its tag."""
    return int(trial.experiment_tag.split("_", 1)[0]) - FIRST_TAG[algorithm] + 1


def _search_progress(method: str, epochs: int, algorithm: str):
    """A Tune callback: each search trial's epochs (``progress.epoch_line``) and how it ended."""
    from ray import tune

    from byol_bench.on_ray.progress import search_trial_line
    from byol_bench.trial.console import epoch_line

    class Progress(tune.Callback):
        def setup(self, **info) -> None:
            self.seen = set()  # the trials that reported since this run (or resumption) began

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            name = f"{method} search #{_search_number(trial, algorithm)}"
            if trial.trial_id not in self.seen and result.get("epoch", 1) > 1:
                print(f"{name}: resumed at epoch {result['epoch']} from its checkpoint", file=sys.stderr, flush=True)
            self.seen.add(trial.trial_id)
            if "epoch" in result:
                print(epoch_line(name, result, epochs), file=sys.stderr, flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            print(search_trial_line(method, _search_number(trial, algorithm), trial.last_result or {}, epochs),
                  file=sys.stderr, flush=True)

    return Progress()


def _search_tuner(search: Search, method: str, storage: Path, algorithm: str, resume: bool, verbose: bool):
    """Ray Tune's Tuner for one method's search (or the one an interrupted search left behind): ``algorithm``
    samples the space (a fresh one per method: no search learns from another's), ASHA stops the trials whose
    validation kNN trails at a rung, and every method gets the same budget."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    runnable = tune.with_resources(tune.with_parameters(search_trainable, knobs=search_knobs(search, method)),
                                   tune.PlacementGroupFactory([{"CPU": search.sweep.cpus_per_worker,
                                                                "GPU": search.sweep.gpus_per_worker}]))
    if resume and tune.Tuner.can_restore(str(storage / method)):
        return tune.Tuner.restore(str(storage / method), trainable=runnable, resume_errored=True)
    return tune.Tuner(
        runnable, param_space=_search_space(search.space[method]),
        tune_config=tune.TuneConfig(
            metric=SCORE, mode="max", search_alg=_search_algorithm(algorithm, search.seed, search.sweep.max_concurrent),
            num_samples=search.trials or -1,
            scheduler=ASHAScheduler(time_attr="epoch", max_t=search.epochs, grace_period=search.grace_period,
                                    reduction_factor=search.reduction_factor, stop_last_trials=False),
            time_budget_s=search.hours * 3600 if search.hours else None,
            max_concurrent_trials=search.sweep.max_concurrent, reuse_actors=True,
            trial_name_creator=lambda trial: f"{method} search #{_search_number(trial, algorithm)}",
            trial_dirname_creator=lambda trial: f"{method}-{_search_number(trial, algorithm):03d}"),
        run_config=tune.RunConfig(
            name=method, storage_path=str(storage), verbose=1 if verbose else 0,
            callbacks=[_search_progress(method, search.epochs, algorithm)],
            failure_config=tune.FailureConfig(max_failures=search.sweep.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )


SCORE = "knn_top1"  # what a search maximises: the kNN monitor's top-1, on the validation split


def _search_rows(search: Search, method: str, grid) -> list[dict]:
    """One row per search trial that began: its sampled values, its last epoch and validation kNN, whether ASHA
    stopped it early, its status and seconds."""
    rows = []
    for result in grid:
        if not result.metrics and result.error is None:  # not begun (a stopped search's): --resume runs it
            continue
        metrics = result.metrics
        epochs = metrics.get("epoch", 0)
        loss = metrics.get("loss", 0.0)
        status = "failed" if result.error is not None else "ok" if math.isfinite(loss) else "diverged"
        rows.append({"method": method, "trial": int(Path(result.path).name.rsplit("-", 1)[-1]),
                     **{key: (result.config or {}).get(key) for key in search.space[method]},
                     SCORE: metrics.get(SCORE), "epochs": epochs,
                     "stopped_early": status == "ok" and epochs < search.epochs, "status": status,
                     "time_s": metrics.get("time_total_s"),
                     "error": last_lines(result.error) if result.error else None})
    return sorted(rows, key=lambda row: row["trial"])


def run_search(search: Search, folder: Path, resume: bool = False, verbose: bool = False) -> tuple[list[dict], str]:
    """Each method's search in turn, into ``folder/search/<method>/``: (a row per search trial, the algorithm
    that ran). Ctrl-C raises KeyboardInterrupt (``_ctrl_c_raises``); --resume then continues the search, and a
    finished method's search is read back, not rerun."""
    rows, algorithm = [], _algorithm_used(search)
    for method in search.methods:
        print(f"search {method}: up to {search.trials or 'unlimited'} trials"
              + (f" in {search.hours:g} h" if search.hours else "") + f" of {search.epochs} epochs, ASHA on the "
              "validation kNN", file=sys.stderr, flush=True)
        with _ctrl_c_raises():
            grid = _search_tuner(search, method, folder / SEARCH_FOLDER, algorithm, resume, verbose).fit()
        method_rows = _search_rows(search, method, grid)
        rows += method_rows
        print(search_line(method, method_rows, search.epochs), file=sys.stderr, flush=True)
    return rows, algorithm


@contextlib.contextmanager
def _ctrl_c_raises():
    """Ctrl-C as a KeyboardInterrupt inside Tune's fit(): Tune's own handler would end it as if every trial had
    finished, and a stopped search would pass for a finished one. Tune saves its state every few seconds
    (``save_state_often``), from which --resume continues."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield
    finally:
        del os.environ["TUNE_DISABLE_SIGINT_HANDLER"]


def _check_tune_folder(folder: Path, resume: bool) -> None:
    if not resume and any(path.name != LOCK_FILE for path in folder.iterdir()):
        raise UserError(f"{folder} already holds results; pass --resume to continue that tune, or --results-dir "
                        "to write elsewhere")
    if resume and not (folder / SEARCH_FOLDER).is_dir():
        raise UserError(f"--resume: {folder} holds no search to resume; run without --resume first")


def run_tune(search: Search, results_dir: Path, address: str | None = None, resume: bool = False,
             track: list[str] | None = None, tracking_uri: str | None = None, verbose: bool = False) -> int:
    """A tuned comparison: each method's search (``run_search``), its table and record, then each method's
    chosen values (and defaults) over the final seeds as a sweep into the same folder, with its report;
    returns the command's exit code (130 when interrupted)."""
    folder = (results_dir / search.sweep.name).resolve()
    check_writable(folder, "results folder", "pass --results-dir")
    with hold_folder(folder, "pass --results-dir to write elsewhere"):  # the search's and the final sweep's
        _check_tune_folder(folder, resume)
        check_tracking(track or [], tracking_uri, folder)
        return _run_tune(search, folder, results_dir, address, resume, track, tracking_uri, verbose)


def _run_tune(search: Search, folder: Path, results_dir: Path, address: str | None, resume: bool,
              track: list[str] | None, tracking_uri: str | None, verbose: bool) -> int:
    """``run_tune`` in its results ``folder``, which this process holds."""
    save_state_often()
    ray, started_here = start_ray(address, verbose)
    try:
        check_resources(ray, search.sweep, 1)
        try:
            rows, algorithm = run_search(search, folder, resume, verbose)
        except KeyboardInterrupt:
            print(f"tune interrupted: continue with 'byol-bench tune {search.sweep.path} --results-dir {results_dir} "
                  "--resume'", file=sys.stderr)
            return 130
        table = pd.DataFrame(rows, columns=["method", "trial", *search.searched, SCORE, "epochs", "stopped_early",
                                            "status", "time_s", "error"])
        table["chosen"] = table.index.isin(list(best_trials(search, table).values()))
        write_parquet(folder / SEARCH_TABLE, table)
        best = chosen(search, table)
        write_json(folder / SEARCH_RECORD, asdict(SearchRecord(
            algorithm=algorithm, epochs=search.epochs, trials=search.trials, hours=search.hours,
            validation=search.validation, defaults=defaults(search), chosen=best)))
        final, planned = final_runs(search, best)
        return run_sweep(final, results_dir, address=address, resume=(folder / TUNE_FOLDER).is_dir(), track=track,
                         tracking_uri=tracking_uri, verbose=verbose, planned=planned)
    finally:
        if started_here:
            ray.shutdown()
