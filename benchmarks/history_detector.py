"""How well byol-bench history's change-point detector does on synthetic series with this machine's noise.

Prints, over many seeds: how often a planted slowdown is found and how close to its revision, how often a
steady drift is found, and the false-positive rate on pure noise (series with any change point). The noise is a
coefficient of variation per run (--noise, default 0.10: one trial's images/s, six runs here under load).

    .venv/bin/python benchmarks/history_detector.py --seeds 1000
"""

import argparse
import time

import numpy as np

from byol_bench.regression.history import Detector, change_points


def noisy(levels: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    return levels * (1 + noise * rng.standard_normal(len(levels)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.10, help="run-to-run coefficient of variation")
    parser.add_argument("--runs", type=int, default=30, help="runs per series (one per revision)")
    parser.add_argument("--slowdown", type=float, default=0.15, help="the planted slowdown, at the middle revision")
    parser.add_argument("--drift", type=float, default=0.03, help="the drift per revision")
    args = parser.parse_args()
    at, runs = args.runs // 2, np.arange(args.runs)
    shapes = {"slowdown": np.where(runs < at, 1.0, 1 - args.slowdown), "drift": (1 - args.drift) ** runs,
              "noise": np.ones(args.runs)}
    found = {name: [] for name in shapes}
    started = time.perf_counter()
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        for name, shape in shapes.items():
            found[name].append(change_points(noisy(100 * shape, args.noise, rng), Detector(seed=seed)))
    detected = np.mean([bool(points) for points in found["slowdown"]])
    exact = np.mean([points == [at] for points in found["slowdown"]])
    off = [min(abs(point - at) for point in points) for points in found["slowdown"] if points]
    print(f"{args.seeds} seeds, {args.runs} runs a series, noise {100 * args.noise:g}% a run, "
          f"{time.perf_counter() - started:.0f} s")
    print(f"{100 * args.slowdown:g}% slowdown at run {at}: found {100 * detected:.1f}%, named exactly (and nothing "
          f"else) {100 * exact:.1f}%; the nearest change point within 1 run {100 * np.mean(np.array(off) <= 1):.1f}%, "
          f"within 3 runs {100 * np.mean(np.array(off) <= 3):.1f}%")
    print(f"{100 * args.drift:g}% drift a run: found {100 * np.mean([bool(p) for p in found['drift']]):.1f}%")
    print(f"pure noise: a change point in {100 * np.mean([bool(p) for p in found['noise']]):.2f}% of series")


if __name__ == "__main__":
    main()
