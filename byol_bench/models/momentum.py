"""The target network's momentum (EMA) schedules, evaluated per optimizer step.

A momentum schedule is a named, recorded knob written as ``KIND:START[-END]``:

- ``constant:0.99``        τ stays at 0.99.
- ``cosine:0.99-1.0``      the BYOL paper's τ = 1 − (1 − τ_base)(cos(πk/K) + 1)/2 (lightly's cosine_schedule).
- ``linear:0.9-0.99``      τ rises linearly from 0.9 to 0.99 over training.
- ``warmup:0.99@0.1``      τ rises linearly from 0 to 0.99 over the first 10% of steps, then stays.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightly.utils.scheduler import cosine_schedule

from byol_bench.errors import UserError

MOMENTUM_KINDS = ("constant", "cosine", "linear", "warmup")
_FORMS = "constant:0.99, cosine:0.99-1.0, linear:0.9-0.99 or warmup:0.99@0.1"


@dataclass(frozen=True)
class MomentumSchedule:
    kind: str
    start: float
    end: float
    warmup_fraction: float = 0.0

    def __call__(self, step: int, total_steps: int) -> float:
        progress = step / max(total_steps - 1, 1)
        if self.kind == "constant":
            return self.start
        if self.kind == "cosine":
            return cosine_schedule(step, total_steps, self.start, self.end)
        if self.kind == "linear":
            return self.start + (self.end - self.start) * min(progress, 1.0)
        # warmup: 0 -> end over the first warmup_fraction of training
        return self.end * min(progress / self.warmup_fraction, 1.0)


def parse_momentum_schedule(text: str) -> MomentumSchedule:
    """Parse ``KIND:START[-END]``; every value must lie in [0, 1]."""
    bad = UserError(f"momentum_schedule '{text}' is not valid; write it as {_FORMS}")
    kind, _, spec = str(text).partition(":")
    if kind not in MOMENTUM_KINDS or not spec:
        raise bad
    try:
        if kind == "constant":
            schedule = MomentumSchedule(kind, float(spec), float(spec))
        elif kind == "warmup":
            value, _, fraction = spec.partition("@")
            schedule = MomentumSchedule(kind, 0.0, float(value), float(fraction))
            if not 0.0 < schedule.warmup_fraction <= 1.0:
                raise bad
        else:
            start, end = spec.split("-")
            schedule = MomentumSchedule(kind, float(start), float(end))
    except ValueError:
        raise bad from None
    if not (0.0 <= schedule.start <= 1.0 and 0.0 <= schedule.end <= 1.0):
        raise bad
    return schedule
