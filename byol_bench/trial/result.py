"""Reading a trial's result (``run_trial``'s JSON-shaped dict) where its shape changed over versions."""

from __future__ import annotations


def result_floors(result: dict) -> dict:
    """The floors a result recorded: under ``floors``, or under ``baselines`` in results written before they were
    named so (a baseline is a saved sweep, ``byol-bench baseline save``)."""
    return result.get("floors", result.get("baselines")) or {}
