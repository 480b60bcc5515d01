"""What a person watching a sweep reads: one line per trial and epoch, and a status summary now and then.

Plain Python, fed by ``tune_runner``'s Tune callback; ``train.run_trial`` prints its epochs with the same
``epoch_line``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

SUMMARY_EVERY_S = 30.0


def epoch_line(name: str, row: dict, epochs: int) -> str:
    """One epoch of one trial: loss, learning rate, momentum, images/s and the kNN monitor when present."""
    return (f"{name}: epoch {row['epoch']}/{epochs} loss {row['loss']:.4f} lr {row['lr']:.4f}"
            + (f" tau {row['momentum']:.4f}" if row.get("momentum") is not None else "")
            + (f" {row['images_per_s']:.0f} img/s" if row.get("images_per_s") else "")
            + (f" knn {row['knn_top1']:.3f}" if row.get("knn_top1") is not None else ""))


def result_line(name: str, result: dict) -> str:
    """A finished trial (``run_trial``'s result): its status, kNN and linear top-1 against the random-init
    floors, speed and pretraining time."""
    metrics, floors = result["metrics"], result["baselines"]
    line = f"{name}: {result['status']}"
    if metrics["knn_top1"] is not None:
        line += (f", kNN top-1 {metrics['knn_top1']:.3f} (random init {floors['random_init_knn_top1']:.3f}), "
                 f"linear top-1 {metrics['linear_top1']:.3f} ({floors['random_init_linear_top1']:.3f})")
    return line + f", {metrics['images_per_s'] or 0:.0f} img/s, pretrained in {metrics['pretrain_time_s']:.0f} s"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class SweepProgress:
    """Turns a sweep's results into lines: ``epoch_line`` per epoch, ``result_line`` per finished trial,
    and every ``SUMMARY_EVERY_S`` seconds how many trials are done, running, pending and failed, with
    the time so far and an estimate of the time left (from the epochs done, the way trials have gone)."""

    def __init__(self, epochs_by_trial: dict[str, int], print_line: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.epochs_by_trial = epochs_by_trial
        self.epochs_done = dict.fromkeys(epochs_by_trial, 0)
        self.print = print_line or (lambda line: print(line, file=sys.stderr, flush=True))
        self.clock, self.start = clock, clock()
        self.last_summary = self.start

    def result(self, trial_id: str, result: dict) -> None:
        """A trial reported: an epoch row, or (with ``result_json``) its final result."""
        if "result_json" in result:
            self.epochs_done[trial_id] = self.epochs_by_trial[trial_id]
            self.print(result_line(trial_id, json.loads(result["result_json"])))
        elif "epoch" in result:
            if self.epochs_done[trial_id] == 0 and result["epoch"] > 1:  # its first epoch here: a checkpoint's next
                self.print(f"{trial_id}: resumed at epoch {result['epoch']} from its checkpoint")
            self.epochs_done[trial_id] = result["epoch"]
            self.print(epoch_line(trial_id, result, self.epochs_by_trial[trial_id]))

    def tick(self, statuses: dict[str, str]) -> None:
        """Called often with each trial's status (done, running, pending, failed): prints the summary when due."""
        now = self.clock()
        if now - self.last_summary >= SUMMARY_EVERY_S:
            self.last_summary = now
            self.print(self.summary(statuses))

    def summary(self, statuses: dict[str, str]) -> str:
        counts = {state: sum(1 for s in statuses.values() if s == state) for state in ("done", "running", "pending", "failed")}
        elapsed = self.clock() - self.start
        done, total = sum(self.epochs_done.values()), sum(self.epochs_by_trial.values())
        left = f"about {_duration(elapsed * (total - done) / done)} left" if done else "time left not known yet"
        return (f"sweep: {counts['done']} done, {counts['running']} running, {counts['pending']} pending, "
                f"{counts['failed']} failed of {len(self.epochs_by_trial)}; {_duration(elapsed)} so far, {left}")
