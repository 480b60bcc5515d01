"""What a person watching a sweep reads: one line per trial and epoch, and a status summary now and then.

Plain Python, fed by ``on_ray.sweep``'s Tune callback; a trial prints its own epochs with the same
``trial.console.epoch_line``.
"""

from __future__ import annotations

import heapq
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from byol_bench.trial.console import epoch_line, result_line
from byol_bench.trial.result import TrialResult

SUMMARY_EVERY_S = 30.0
RECENT_EPOCHS = 2  # a trial's epochs that time its epochs to come


def search_trial_line(method: str, number: int, last: dict, epochs: int) -> str:
    """How one search trial ended: every epoch trained or stopped early, and its last validation kNN."""
    done = last.get("epoch", 0)
    score = f", validation kNN {last['knn_top1']:.3f}" if last.get("knn_top1") is not None else ""
    ended = f"trained all {epochs} epochs" if done == epochs else f"stopped after epoch {done} of {epochs}"
    return f"{method} search #{number}: {ended}{score}"


def search_line(method: str, rows: list[dict], epochs: int) -> str:
    """A method's search when it ends: its trials, how many were stopped early, its best full trial."""
    full = [row for row in rows if row["status"] == "ok" and row["epochs"] == epochs and row["knn_top1"] is not None]
    early = sum(row["stopped_early"] for row in rows)
    line = f"search {method}: {len(rows)} trials, {early} stopped early"
    if not full:
        return line + "; none trained every epoch"
    best = max(full, key=lambda row: row["knn_top1"])
    return line + f"; best validation kNN {best['knn_top1']:.3f} (trial #{best['trial']})"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@dataclass
class TrialTimes:
    """What the progress has seen of one trial: its epochs' seconds, and when it started, last reported and ended."""

    setting: tuple  # its knobs but the seed: trials of one setting train at one speed
    kind: tuple  # its method and batch size, which set most of an epoch's time
    method: str
    epochs: int
    done: int = 0  # epochs done, a resumed trial's earlier ones included
    epoch_s: list[float] = field(default_factory=list)  # each epoch seen here, as the trial measured it
    last: float | None = None  # when it was first seen running, then when it last reported
    setup_s: float | None = None  # seen here: from its start to its first epoch, beyond that epoch's time
    evaluation_s: float | None = None  # seen here: from its last epoch to its result
    retried: bool = False  # failed, and started again: its next epoch says where it continues


class SweepProgress:
    """Turns a sweep's results into lines: ``epoch_line`` per epoch, ``result_line`` per finished trial,
    and every ``SUMMARY_EVERY_S`` seconds how many trials are done, running, pending and failed, with
    the time so far and an estimate of the time left (``time_left``)."""

    def __init__(self, trials: dict[str, dict], print_line: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``trials``: each planned trial's id -> its knobs (method and epochs among them, defaults filled in)."""
        self.trials = {trial_id: TrialTimes(tuple(sorted((k, str(v)) for k, v in knobs.items() if k != "seed")),
                                            (knobs["method"], knobs.get("batch_size")), knobs["method"], knobs["epochs"])
                       for trial_id, knobs in trials.items()}
        self.print = print_line or (lambda line: print(line, file=sys.stderr, flush=True))
        self.clock, self.start = clock, clock()
        self.last_summary, self.slots = self.start, 1

    def result(self, trial_id: str, result: dict) -> None:
        """A trial reported: an epoch row, or (with ``result_json``) its final result."""
        trial, now = self.trials[trial_id], self.clock()
        if "result_json" in result:
            if trial.epoch_s:  # its last epoch was seen here
                trial.evaluation_s = now - trial.last
            trial.done, trial.last = trial.epochs, now
            self.print(result_line(trial_id, TrialResult.from_json(result["result_json"])))
        elif "epoch" in result:
            if "note" in result:  # e.g. a damaged checkpoint passed over
                self.print(f"{trial_id}: {result['note']}")
            if trial.retried or result["epoch"] != trial.done + 1:  # a retried trial's, or a resumed sweep's
                self.print(self._restart_line(trial_id, result["epoch"]))
                trial.retried = False
            if "epoch_time_s" in result:
                if result["epoch"] == 1 and trial.last is not None:
                    trial.setup_s = max(0.0, now - trial.last - result["epoch_time_s"])
                trial.epoch_s.append(result["epoch_time_s"])
            trial.done, trial.last = result["epoch"], now
            self.print(epoch_line(trial_id, result, trial.epochs))

    def retry(self, trial_id: str, failures: int) -> None:
        """A trial failed (its error is in Tune's log above) and Tune starts it again."""
        self.trials[trial_id].retried = True
        self.print(f"{trial_id}: failed (failure {failures}); retrying it from its last checkpoint")

    def _restart_line(self, trial_id: str, epoch: int) -> str:
        """A trial continuing at ``epoch`` (from its checkpoint, or from scratch), with the epochs seen here that
        it does again: those its checkpoint had not kept."""
        rerun = self.trials[trial_id].done - (epoch - 1)
        return (f"{trial_id}: " + (f"resumed at epoch {epoch} from its checkpoint" if epoch > 1 else "restarted from epoch 1")
                + (f", {rerun} epoch(s) run again" if rerun > 0 else ""))

    def tick(self, statuses: dict[str, str]) -> None:
        """Called often with each trial's status (done, running, pending, failed): prints the summary when due."""
        now = self.clock()
        running = [trial_id for trial_id, status in statuses.items() if status == "running"]
        for trial_id in running:
            trial = self.trials[trial_id]
            if trial.last is None:
                trial.last = now
        self.slots = max(self.slots, len(running))
        if now - self.last_summary >= SUMMARY_EVERY_S:
            self.last_summary = now
            self.print(self.summary(statuses))

    def summary(self, statuses: dict[str, str]) -> str:
        counts = {state: sum(1 for s in statuses.values() if s == state) for state in ("done", "running", "pending", "failed")}
        elapsed, left = self.clock() - self.start, self.time_left(statuses)
        estimate = f"about {_duration(left)} left" if left is not None else "time left not known yet"
        return (f"sweep: {counts['done']} done, {counts['running']} running, {counts['pending']} pending, "
                f"{counts['failed']} failed of {len(self.trials)}; {_duration(elapsed)} so far, {estimate}")

    def time_left(self, statuses: dict[str, str]) -> float | None:
        """Seconds until the last trial ends: each unfinished trial's work left (its epochs left at the seconds
        per epoch it measured lately, else its setting's (its other seeds), else its method's at its batch size,
        else its method's, else any trial's; its set-up unless it has begun training, and its evaluation, as long
        as other trials' took), less the time since it last reported; the running trials' first, then the pending
        ones as slots free up (as many slots as trials were seen running at once). None before any epoch was
        measured. Each trial's latest epochs count, not its first: the machine's load changes."""
        measured = self._epoch_s(lambda other: True)
        if not measured:
            return None
        setup, evaluation = (mean([getattr(trial, name) for trial in self.trials.values()
                                   if getattr(trial, name) is not None]) for name in ("setup_s", "evaluation_s"))
        now = self.clock()

        def work_left(trial: TrialTimes) -> float:
            own = (trial.epoch_s[-RECENT_EPOCHS:] or self._epoch_s(lambda other: other.setting == trial.setting)
                   or self._epoch_s(lambda other: other.kind == trial.kind)
                   or self._epoch_s(lambda other: other.method == trial.method) or measured)
            started = trial.last if trial.last is not None else now
            return ((setup if trial.done == 0 else 0.0) + (trial.epochs - trial.done) * mean(own) + evaluation
                    - (now - started))

        running = [max(0.0, work_left(self.trials[t])) for t, status in statuses.items() if status == "running"]
        pending = [work_left(self.trials[t]) for t, status in statuses.items() if status == "pending"]
        free_at = running + [0.0] * max(0, self.slots - len(running))  # when each slot is next free
        heapq.heapify(free_at)
        for seconds in pending:  # Tune starts the pending trials in order, each on the first slot to free up
            heapq.heappush(free_at, heapq.heappop(free_at) + seconds)
        return max(free_at, default=0.0)

    def _epoch_s(self, kin: Callable[[TrialTimes], bool]) -> list[float]:
        return [s for trial in self.trials.values() if kin(trial) for s in trial.epoch_s[-RECENT_EPOCHS:]]
