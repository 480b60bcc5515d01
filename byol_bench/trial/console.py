"""A trial's console lines: one per epoch and one for its result, the same in a sweep's console."""

from __future__ import annotations

from byol_bench.protocol import floors_under
from byol_bench.trial.result import TrialResult, values


def epoch_line(name: str, row: dict, epochs: int) -> str:
    """One epoch of one trial: loss, learning rate, momentum, images/s and the kNN monitor when present."""
    return (f"{name}: epoch {row['epoch']}/{epochs} loss {row['loss']:.4f} lr {row['lr']:.4f}"
            + (f" tau {row['momentum']:.4f}" if row.get("momentum") is not None else "")
            + (f" {row['images_per_s']:.0f} img/s" if row.get("images_per_s") else "")
            + (f" knn {row['knn_top1']:.3f}" if row.get("knn_top1") is not None else ""))


def result_line(name: str, result: TrialResult) -> str:
    """A finished trial (``run_trial``'s result): its status, kNN and linear top-1 against the random-init
    floors, speed and pretraining time."""
    metrics, floors = result.metrics, result.floors
    line = f"{name}: {result.status}"
    if metrics.knn_top1 is not None:
        line += (f", kNN top-1 {metrics.knn_top1:.3f} (random init {floors.random_init_knn_top1:.3f}), "
                 f"linear top-1 {metrics.linear_top1:.3f} ({floors.random_init_linear_top1:.3f})")
    line += f", {metrics.images_per_s or 0:.0f} img/s, pretrained in {metrics.pretrain_time_s:.0f} s"
    under = floors_under({**values(metrics), **values(floors)})
    return line + (f"; under its floor: {', '.join(under)}" if under else "")
