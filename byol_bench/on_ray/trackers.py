"""Experiment tracking of a sweep (``byol-bench sweep --track``) through Ray Tune's own logger callbacks.

Every trial's Tune config holds its knobs next to its id (``param_space``): the trackers record them as
the trial's parameters, and what it reports each epoch and at the end as its metrics. Whatever a tracker
needs is checked before the sweep starts, so that a bad ``--track`` or ``--tracking-uri`` ends as one
line with nothing written.
"""

from __future__ import annotations

import functools
import importlib.util
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from byol_bench.errors import UserError, did_you_mean, unknown
from byol_bench.plan.sweep_file import PlannedTrial
from byol_bench.results.tables import check_writable

# What each tracker cannot log without: modules that its pip extra (of the same name) installs.
TRACKER_MODULES = {"mlflow": ("mlflow", "sqlalchemy", "alembic"), "tensorboard": ("tensorboardX",), "wandb": ("wandb",)}
TRACKERS = tuple(TRACKER_MODULES)
MLFLOW_DB = "mlflow.db"  # the default MLflow store: a SQLite file in the sweep's results folder
MLFLOW_SCHEMES = ("sqlite", "http", "https")
SERVER_TIMEOUT_S = 5
# Tune's bookkeeping in every result, not measurements: the config is the run's params already, and the
# trial's id would parse as a number.
NOT_METRICS = {"config", "trial_id", "pid", "timestamp", "done", "should_checkpoint"}


@dataclass(frozen=True)
class Tracking:
    """The trackers a sweep logs to, checked; ``mlflow_uri`` is MLflow's store (None without MLflow)."""
    trackers: tuple[str, ...]
    mlflow_uri: str | None = None

    def callbacks(self, experiment: str) -> list:
        """Ray Tune's logger callbacks for these trackers; MLflow's experiment and W&B's project are named
        ``experiment``. TensorBoard's event files go into each trial's Tune folder."""
        made = []
        if "mlflow" in self.trackers:
            made.append(_mlflow_callback(self.mlflow_uri, experiment))
        if "tensorboard" in self.trackers:
            from ray.tune.logger import TBXLoggerCallback

            made.append(TBXLoggerCallback())  # Tune adds one anyway where tensorboardX is: asked for, it must be there
        if "wandb" in self.trackers:
            from ray.air.integrations.wandb import WandbLoggerCallback

            made.append(WandbLoggerCallback(project=experiment))
        return made

    def where(self, experiment: str, tune_folder: str) -> list[str]:
        """Where each tracker's record of the sweep is, and how to look at it."""
        lines = []
        if "mlflow" in self.trackers:
            lines.append(f"MLflow: experiment '{experiment}' in {self.mlflow_uri} (to browse it: mlflow ui "
                         f"--backend-store-uri {self.mlflow_uri}, from the full 'mlflow' package)")
        if "tensorboard" in self.trackers:
            lines.append(f"TensorBoard: tensorboard --logdir {tune_folder}")
        if "wandb" in self.trackers:
            lines.append(f"W&B: project '{experiment}'")
        return lines


def _mlflow_callback(uri: str, experiment: str):
    """Ray's MLflow callback, with one run per trial even across a resumed sweep (Ray's would start a second
    one for each trial the interruption cut short, leaving the first 'RUNNING'), and without Tune's
    bookkeeping among the metrics."""
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class MLflowCallback(MLflowLoggerCallback):
        def log_trial_start(self, trial) -> None:
            if trial not in self._trial_runs:  # first seen by this driver: a resumed trial continues its run
                earlier = MlflowClient(self.tracking_uri).search_runs(
                    [self.mlflow_util.experiment_id], f"tags.trial_name = '{trial}'", max_results=1)
                if earlier:
                    self._trial_runs[trial] = earlier[0].info.run_id
            super().log_trial_start(trial)

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k not in NOT_METRICS})

    return MLflowCallback(tracking_uri=uri, experiment_name=experiment)


def check_tracking(trackers: list[str], tracking_uri: str | None, folder: Path) -> Tracking:
    """The trackers asked for, each known and installed, and MLflow's store (default: a SQLite file in the
    results ``folder``) well formed and reachable; a UserError otherwise. Writes nothing."""
    names = tuple(dict.fromkeys(trackers))  # --track given twice for one tracker means it once
    for name in names:
        if name not in TRACKER_MODULES:
            raise unknown("tracker", name, TRACKERS)
        missing = [module for module in TRACKER_MODULES[name] if importlib.util.find_spec(module) is None]
        if missing:
            raise UserError(f"--track {name} needs {', '.join(missing)} (not installed here); "
                            f"pip install 'byol-bench[{name}]'")
    if "mlflow" not in names:
        if tracking_uri is not None:
            raise UserError(f"--tracking-uri {tracking_uri} is where MLflow logs; add --track mlflow, or leave it out")
        return Tracking(names)
    return Tracking(names, _checked_mlflow_uri(tracking_uri) if tracking_uri else f"sqlite:///{folder / MLFLOW_DB}")


def _checked_mlflow_uri(uri: str) -> str:
    """A SQLite file whose folder can be made (its path made absolute, so that a resumed sweep finds it
    from anywhere), or an MLflow server that answers."""
    scheme = urlsplit(uri).scheme
    if scheme not in MLFLOW_SCHEMES:
        raise UserError(f"--tracking-uri {uri}: unknown scheme '{scheme}'{did_you_mean(scheme, MLFLOW_SCHEMES)}; "
                        "give sqlite:///PATH/mlflow.db or http(s)://HOST:PORT of an MLflow server")
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if path == uri or not path or path.endswith("/"):
            raise UserError(f"--tracking-uri {uri}: a SQLite store is sqlite:///RELATIVE/PATH.db or "
                            "sqlite:////ABSOLUTE/PATH.db")
        database = Path(path).resolve()
        check_writable(database, "--tracking-uri", "choose a SQLite file in a folder you can write", file=True)
        return f"sqlite:///{database}"
    _check_server(uri)
    return uri


def _check_server(uri: str) -> None:
    """An MLflow server answers at ``uri``: its /health says OK, or asks for the credentials that the MLflow
    client will send (a proxy or another web server would answer with something else)."""
    if not urlsplit(uri).hostname:
        raise UserError(f"--tracking-uri {uri}: no host; give http(s)://HOST:PORT of an MLflow server")
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=SERVER_TIMEOUT_S).close()
    except urllib.error.HTTPError as error:
        if error.code not in (401, 403):
            raise UserError(f"--tracking-uri {uri}: what answers there is not an MLflow server (HTTP {error.code} "
                            "for /health); check host and port") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(f"--tracking-uri {uri}: no MLflow server answers there ({reason}); start one "
                        "('mlflow server'), or leave --tracking-uri out for a SQLite file in the results folder") from None


def param_space(planned: list[PlannedTrial]) -> dict:
    """Tune's search space: the grid of trial ids and, beside the id, every knob the trial runs with (looked
    up by the id), which the trackers log as the trial's parameters. Tune counts only the id as searched,
    so its live table and trial folders are still named by the id alone."""
    from ray import tune

    configs = {p.trial_id: p.resolved for p in planned}
    knobs = next(iter(configs.values()))  # every trial's resolved config has every key
    return {"trial_id": tune.grid_search(list(configs)),
            **{key: tune.sample_from(functools.partial(_knob, configs, key)) for key in knobs}}


def _knob(configs: dict, key: str, config: dict):
    return configs[config["trial_id"]][key]
