"""The learning-rate schedule, evaluated per optimizer step."""

from __future__ import annotations

import math


def learning_rate(step: int, total_steps: int, peak_lr: float, warmup_steps: int, kind: str) -> float:
    """Linear warm-up to ``peak_lr``, then constant or cosine decay to zero."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return peak_lr
    decay_steps = max(total_steps - warmup_steps, 1)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps))
