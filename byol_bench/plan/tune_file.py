"""A tuned comparison (``byol-bench tune``): a sweep file with a ``search`` section, checked before anything
runs, and the pure steps around Ray Tune's search (no Ray here; ``on_ray.tuning.run_tune`` runs it).

Every method gets the same budget of search trials, scored by the kNN monitor on a validation split held
out of the train split (the test split goes unread); then each method's best configuration, and its
defaults, run over ``final_seeds`` as an ordinary sweep, measured on the test split.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from byol_bench.config import KEYS, is_key, knob_types, make_config, method_reads, resolved_config
from byol_bench.errors import UserError, did_you_mean, unknown
from byol_bench.plan.sweep_file import PlannedTrial, Sweep, expand, load_sweep
from byol_bench.protocol import PROTOCOL, setting_label

SEARCH_KEYS = ("space", "algorithm", "budget", "scheduler", "validation", "final_seeds", "run_defaults", "seed")
DISTRIBUTIONS = ("loguniform", "uniform", "choice")
ALGORITHMS = ("optuna", "random")
EVERY_METHOD = "all"  # the space's entry that every method searches
# The knobs that fix what is measured and how: one protocol for every trial of a comparison, never searched.
# What a search may not tune: the protocol, what every method is scored by and on, and the seed.
NOT_SEARCHED = ("method", "knn_monitor_every", "workers", "seed", *PROTOCOL)
CHOSEN_DIGITS = 3  # significant digits a chosen number keeps: the final runs' settings read as numbers, not noise
# A tuned comparison's results folder holds its search beside the final runs' sweep files:
SEARCH_FOLDER = "search"  # each method's Ray Tune experiment, search/<method>/
SEARCH_TABLE = "search.parquet"  # one row per search trial
SEARCH_RECORD = "search.json"  # a SearchRecord
SEARCH_FILES = (SEARCH_FOLDER, SEARCH_TABLE, SEARCH_RECORD)


@dataclass(frozen=True)
class Distribution:
    kind: str  # one of DISTRIBUTIONS
    values: tuple  # (low, high) for loguniform and uniform; the choices for choice


@dataclass
class Search:
    sweep: Sweep  # the file's shared knobs, its methods (axes.method), resources and retries
    space: dict[str, dict[str, Distribution]]  # per method: each searched knob's distribution
    algorithm: str = "optuna"
    trials: int | None = None  # the budget of every method: at most this many search trials...
    hours: float | None = None  # ...and/or this many hours of wall-clock search
    grace_period: int = 1  # ASHA: epochs before a trial can be stopped early
    reduction_factor: float = 2.0  # ASHA: 1 / the fraction of trials that go on at each rung
    validation: float = 0.1
    final_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    run_defaults: bool = True  # also run each method's defaults over final_seeds
    seed: int = 0  # seeds the search algorithm, the validation split and the search trials

    @property
    def methods(self) -> list[str]:
        return list(self.space)

    @property
    def searched(self) -> list[str]:
        """Every knob some method searches, in the order the space names them."""
        return list(dict.fromkeys(key for space in self.space.values() for key in space))

    @property
    def epochs(self) -> int:
        return make_config(self.sweep.trial).epochs


@dataclass
class SearchRecord:
    """What the report shows of a search beside its trials' table (search.json)."""

    algorithm: str  # the one that ran: random where optuna was asked for but is not installed
    epochs: int  # of a search trial that is not stopped early
    trials: int | None  # the budget, the same for every method
    hours: float | None
    validation: float
    defaults: dict[str, dict]  # per method: the searched knobs' untuned values
    chosen: dict[str, dict]  # per method: the values its final runs use (none where no search trial finished)

    @classmethod
    def read(cls, path: Path) -> SearchRecord:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def _fail(where: str, message: str) -> UserError:
    return UserError(f"search.{where}: {message}")


def _whole(where: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(where, f"{value!r} is not valid; give a whole number >= {low}")
    return value


def _positive(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _fail(where, f"{value!r} is not valid; give a number above 0")
    return float(value)


def load_tune(path: str | Path) -> Search:
    """A tune file: a sweep file whose axes list only the methods, with a ``search`` section; checked whole."""
    sweep = load_sweep(path)
    raw = sweep.search
    if not raw:
        raise UserError(f"{path}: no 'search' section; add one (see benchmarks/sweeps/tune-quick.yaml), or run "
                        "a plain grid with 'byol-bench sweep'")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: 'search' must be a mapping of {', '.join(SEARCH_KEYS)}")
    for key in raw:
        if key not in SEARCH_KEYS:
            raise _fail(key, f"unknown key{did_you_mean(key, SEARCH_KEYS)}; valid keys: {', '.join(SEARCH_KEYS)}")
    if set(sweep.axes) != {"method"}:
        raise UserError(f"{path}: axes: a tune file lists only 'method' (the methods to compare; the seeds are "
                        "search.final_seeds); move the other knobs into 'trial' or the search space")
    if sweep.gpus_per_trial > 1 or "workers" in sweep.trial:
        raise UserError(f"{path}: a search runs one-worker trials; give resources.gpu at most 1 and leave workers out")
    for key in ("validation", "knn_monitor_every", "seed"):
        if key in sweep.trial:
            raise UserError(f"{path}: trial.{key}: the search sets it (search.validation, search.seed, the monitor "
                            "every epoch); leave it out")
    search = Search(sweep=sweep, space={}, **_settings(raw))
    search.space = _space(raw.get("space"), sweep, search)
    return search


def _settings(raw: dict) -> dict:
    """The search section's settings besides the space, checked."""
    algorithm = raw.get("algorithm", "optuna")
    if algorithm not in ALGORITHMS:
        raise unknown("search.algorithm", algorithm, ALGORITHMS)
    budget = raw.get("budget")
    if not isinstance(budget, dict) or not budget or set(budget) - {"trials", "hours"}:
        raise _fail("budget", "give each method's budget as {trials: N} and/or {hours: H}, the same for every method")
    scheduler = raw.get("scheduler") or {}
    if not isinstance(scheduler, dict) or set(scheduler) - {"grace_period", "reduction_factor"}:
        raise _fail("scheduler", "give ASHA's {grace_period: EPOCHS, reduction_factor: R}")
    reduction = _positive("scheduler.reduction_factor", scheduler.get("reduction_factor", 2))
    if not reduction > 1:
        raise _fail("scheduler.reduction_factor", f"{reduction:g} stops no trial; give a number above 1, e.g. 2")
    validation = _positive("validation", raw.get("validation", 0.1))
    if not validation < 1:
        raise _fail("validation", f"{validation:g} is not below 1; give the held-out fraction of the train split")
    seeds = raw.get("final_seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds:
        raise _fail("final_seeds", "give a non-empty list of seeds, e.g. [0, 1, 2]")
    if not isinstance(raw.get("run_defaults", True), bool):
        raise _fail("run_defaults", "give true or false")
    return dict(algorithm=algorithm,
                trials=None if "trials" not in budget else _whole("budget.trials", budget["trials"], 1),
                hours=None if "hours" not in budget else _positive("budget.hours", budget["hours"]),
                grace_period=_whole("scheduler.grace_period", scheduler.get("grace_period", 1), 1),
                reduction_factor=reduction, validation=validation,
                final_seeds=[_whole("final_seeds", seed, 0) for seed in seeds],
                run_defaults=raw.get("run_defaults", True), seed=_whole("seed", raw.get("seed", 0), 0))


def _space(raw, sweep: Sweep, search: Search) -> dict[str, dict[str, Distribution]]:
    """Each method's searched knobs (the ``all`` entry's, then its own), every bound and choice checked as
    the knob's own value would be."""
    methods = sweep.axes["method"]
    if not isinstance(raw, dict) or not raw or not all(isinstance(knobs, dict) for knobs in raw.values()):
        raise _fail("space", f"give per method (or '{EVERY_METHOD}') the knobs to search, e.g. "
                             f"{{{EVERY_METHOD}: {{lr: {{loguniform: [0.02, 1.0]}}}}}}")
    for name in raw:
        if name != EVERY_METHOD and name not in methods:
            raise _fail(f"space.{name}", f"not one of the file's methods ({', '.join(methods)})"
                                         f"{did_you_mean(name, methods)}")
    if search.epochs < search.grace_period:
        raise _fail("scheduler.grace_period", f"{search.grace_period} is more than the trials' {search.epochs} "
                                              "epochs; give at most that")
    base = base_knobs(sweep)
    space = {}
    for method in methods:
        entries = {**{key: (EVERY_METHOD, value) for key, value in raw.get(EVERY_METHOD, {}).items()},
                   **{key: (method, value) for key, value in raw.get(method, {}).items()}}
        if not entries:
            raise _fail("space", f"nothing to search for method {method}; give it knobs, or give '{EVERY_METHOD}' some")
        space[method] = {key: _distribution(f"space.{entry}.{key}", key, value, method, base[method])
                         for key, (entry, value) in entries.items()}
    return space


def _distribution(where: str, key: str, raw, method: str, knobs: dict) -> Distribution:
    """One knob's distribution for ``method``, or the one-line reason it cannot be searched."""
    if not is_key(key):
        raise _fail(where, f"unknown knob{did_you_mean(key, KEYS)}")
    if key in NOT_SEARCHED:
        raise _fail(where, "part of the protocol every method is measured with; fix it in 'trial' instead")
    if not method_reads(method, key):
        raise _fail(where, f"method {method} does not read it; search it under the methods that do")
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
        raise _fail(where, f"give one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [0.01, 1.0]}}")
    kind, values = next(iter(raw.items()))
    if not isinstance(values, list) or not values:
        raise _fail(where, f"{kind} needs a non-empty list")
    if kind != "choice":
        if key in KEYS and knob_types(key)[0] is not float:  # an option's type is checked with each value below
            raise _fail(where, f"{key} is not a real number; search it with choice: [...]")
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise _fail(where, f"{kind} needs [low, high], two numbers")
        if not values[0] < values[1]:
            raise _fail(where, f"the range [{values[0]}, {values[1]}] is empty; give low < high")
        if kind == "loguniform" and not values[0] > 0:
            raise _fail(where, f"loguniform needs low > 0, got {values[0]}; give a positive low or use uniform")
    for value in values:
        try:
            make_config({**knobs, key: value})
        except UserError as error:
            raise _fail(where, str(error)) from None
    return Distribution(kind, tuple(values))


def base_knobs(sweep: Sweep) -> dict[str, dict]:
    """Each method's knobs as the sweep would run it (the shared knobs, its overrides, threads and device)."""
    one_per_method = dataclasses.replace(sweep, axes={"method": sweep.axes["method"]})
    return {trial.knobs["method"]: trial.knobs for trial in expand(one_per_method)}


def search_knobs(search: Search, method: str) -> dict:
    """The knobs every search trial of ``method`` shares: its sweep knobs, measured on the validation split
    every epoch (the monitor is the score; the test split goes unread), at the search's seed."""
    knobs = {key: value for key, value in base_knobs(search.sweep)[method].items() if key != "test_subset"}
    return {**knobs, "validation": search.validation, "knn_monitor_every": 1, "seed": search.seed}


def defaults(search: Search) -> dict[str, dict]:
    """Each method's searched knobs at the values it would run with untuned."""
    resolved = {method: resolved_config(knobs) for method, knobs in base_knobs(search.sweep).items()}
    return {method: {key: resolved[method][key] for key in space} for method, space in search.space.items()}


def best_trials(search: Search, rows: pd.DataFrame) -> dict[str, int]:
    """Each method's best search trial (its row's index): the highest validation kNN top-1 among the trials that
    trained every epoch, the first such on a tie. A method none of whose trials did so has none."""
    best = {}
    for method in search.methods:
        done = rows[(rows["method"] == method) & (rows["status"] == "ok") & (rows["epochs"] == search.epochs)]
        done = done.dropna(subset=["knn_top1"])
        if not done.empty:
            best[method] = done["knn_top1"].idxmax()
    return best


def chosen(search: Search, rows: pd.DataFrame) -> dict[str, dict]:
    """Each method's chosen values: its best trial's (``best_trials``), numbers to CHOSEN_DIGITS significant digits."""
    return {method: {key: _rounded(rows.loc[index, key]) for key in search.space[method]}
            for method, index in best_trials(search, rows).items()}


def _rounded(value):
    if isinstance(value, float) and math.isfinite(value) and not float(value).is_integer():
        return float(f"{value:.{CHOSEN_DIGITS}g}")
    return value.item() if hasattr(value, "item") else value  # a numpy scalar from the table, as plain Python


def final_runs(search: Search, best: dict[str, dict]) -> tuple[Sweep, list[PlannedTrial]]:
    """The final sweep: each method's chosen values (and its defaults, with ``run_defaults``) over the final
    seeds, measured on the test split. The searched knobs are axes, so tuned and default rows are settings
    of their own in the report and in ``compare``."""
    base, untuned = base_knobs(search.sweep), defaults(search)
    axes = ["method", *search.searched, "seed"]
    planned, seen = [], set()
    for method in search.methods:
        for values in [best[method]] * (method in best) + [untuned[method]] * search.run_defaults:
            for seed in search.final_seeds:
                knobs = {**base[method], **values, "seed": seed}
                trial_id = setting_label({key: knobs[key] for key in axes if key in knobs})
                if trial_id not in seen:
                    seen.add(trial_id)
                    planned.append(PlannedTrial(trial_id, knobs))
    values = {key: list(dict.fromkeys(p.knobs[key] for p in planned if key in p.knobs)) for key in axes}
    return dataclasses.replace(search.sweep, axes=values, search={}), planned


def describe_search(search: Search) -> str:
    """Each method's search space, the budget they share, and the final runs (``tune --dry-run``)."""
    lines = [f"tune {search.sweep.name}: {len(search.methods)} methods, each searched with "
             f"{budget_text(search.trials, search.hours)} of at most "
             f"{search.epochs} epochs ({search.algorithm}; ASHA on the validation kNN from epoch "
             f"{search.grace_period}, keeping 1/{search.reduction_factor:g} per rung), {search.validation:g} of "
             f"the train split held out for validation"]
    lines += [f"  {method}: " + ", ".join(f"{key} {d.kind} {list(d.values)}" for key, d in space.items())
              for method, space in search.space.items()]
    runs = "its chosen values" + (" and its defaults" if search.run_defaults else "")
    lines.append(f"then per method {runs} over seeds {search.final_seeds}, on the test split")
    return "\n".join(lines)


def budget_text(trials: int | None, hours: float | None) -> str:
    """A search budget in words: '8 trials', '0.5 hours' or both."""
    return " and ".join(([f"{trials} trials"] if trials else []) + ([f"{hours:g} hours"] if hours else []))
