"""Faults injected at named points of a run, so that a test stops a sweep at a known moment (a node lost, Ctrl-C,
a kill) instead of racing a timer against a trial's speed, which is flaky on fast machines and slow on slow ones.

``BYOL_BENCH_FAILPOINTS`` holds a JSON list of faults, each ``{"at": POINT, "action": ACTION, ...}`` with the facts
it waits for, e.g. ``{"at": "after_epoch", "action": "pause", "trial": "seed=1", "epoch": 2, "first_run": true}``:
pause trial ``seed=1`` once its second epoch is reported, unless it was resumed. Unset (everywhere but the tests),
``failpoint`` does nothing. A process reads the variable when it starts: set it before the Ray cluster starts, or
before a sweep that joins a running one with ``--address`` starts (it hands the faults to the workers there).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time

ENV = "BYOL_BENCH_FAILPOINTS"
POINTS = ("after_epoch",)  # a trial's epoch reported to Ray, with its checkpoint; facts: trial, epoch, first_run
PAUSE_LIMIT_S = 600  # a pause nobody ends (the test died) lets the run go on after this long


def _pause(point: str, facts: dict) -> None:
    print(f"failpoint {point} {facts}: paused", file=sys.stderr, flush=True)
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while time.monotonic() < deadline:
        time.sleep(0.2)


ACTIONS = {"pause": _pause}


@functools.cache
def _faults() -> tuple[dict, ...]:
    faults = tuple(json.loads(os.environ.get(ENV) or "[]"))
    for fault in faults:
        if fault.get("at") not in POINTS or fault.get("action") not in ACTIONS:
            raise ValueError(f"{ENV}: {fault} names no point of {POINTS} or no action of {tuple(ACTIONS)}")
    return faults


def runtime_env() -> dict | None:
    """Ray's runtime environment that gives a job's workers this process's faults (None: no faults here)."""
    return {"env_vars": {ENV: os.environ[ENV]}} if os.environ.get(ENV) else None


def failpoint(point: str, **facts) -> None:
    """Carry out every fault at ``point`` whose facts all hold here."""
    for fault in _faults():
        wanted = {key: value for key, value in fault.items() if key not in ("at", "action")}
        if fault["at"] == point and all(facts.get(key) == value for key, value in wanted.items()):
            ACTIONS[fault["action"]](point, facts)
