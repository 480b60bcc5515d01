"""`make bench` / `make bench-compare` catch a planted slowdown and pass an unchanged rerun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PLANTED = '''
import os, time

def test_hot_path(benchmark):
    delay = float(os.environ.get("PLANTED_DELAY", "0.02"))
    benchmark.pedantic(time.sleep, args=(delay,), rounds=5, iterations=1)
'''


def _make(target, tmp_path, delay):
    # A pytest session of its own: without the xdist worker's variables, which would switch benchmarks off.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}, "PLANTED_DELAY": str(delay)}
    return subprocess.run(["make", "-s", "-C", str(REPO), target, f"BENCH_PATHS={tmp_path / 'bench_planted.py'}",
                           f"BENCH_STORAGE={tmp_path / 'storage'}", f"BENCH_HISTORY={tmp_path / 'history'}"],
                          capture_output=True, text=True, env=env, timeout=300)


def test_bench_compare_fails_on_a_planted_slowdown_only(tmp_path):
    (tmp_path / "bench_planted.py").write_text(PLANTED)
    saved = _make("bench", tmp_path, 0.02)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert list((tmp_path / "storage").rglob("*.json"))
    assert len(list((tmp_path / "history" / "runs").glob("*.parquet"))) == 1  # and appended to the history
    unchanged = _make("bench-compare", tmp_path, 0.02)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    slower = _make("bench-compare", tmp_path, 0.04)
    assert slower.returncode != 0
    assert "Performance has regressed" in slower.stdout + slower.stderr


def test_the_trainer_benchmark_measures_every_contender_and_both_probes(tmp_path):
    """benchmarks/bench_trainer.py at its smallest: every number it prints lands in --out, consistent."""
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_trainer.py"), "--dataset", "synthetic",
                          "--subset", "256", "--batch-size", "64", "--steps", "2", "--warmup-steps", "1", "--rounds", "2",
                          "--threads", "1", "--probe-epochs", "2", "--probe-train-images", "200", "--probe-test-images",
                          "100", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "FLOP bound" in run.stdout and "speed-up" in run.stdout
    training, probe = (json.loads(out.read_text())[key] for key in ("training", "probe"))
    for contender in ("suite", "plain", "step_alone"):
        assert len(training[f"{contender}_images_per_s"]["rounds"]) == 2
    assert training["ratio_suite_over_plain"] == training["suite_images_per_s"]["median"] / training["plain_images_per_s"]["median"]
    assert training["flop_bound_images_per_s"] == training["peak_flops_per_s"]["max"] / training["flops_per_image"]
    assert f"peak of {training['peak_flops_per_s']['max'] / 1e9:.0f} GFLOP/s" in run.stdout
    assert 0 < training["suite_mfu"] < 10 and training["flops_per_image"] > 1e6
    # the same classifier on the same features, cached or recomputed every batch: the same accuracy
    assert probe["cached_top1"] == pytest.approx(probe["backbone_in_loop_top1"], abs=0.02)
