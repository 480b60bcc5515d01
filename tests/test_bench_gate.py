"""`make bench` / `make bench-compare` catch a planted slowdown and pass an unchanged rerun."""

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PLANTED = '''
import os, time

def test_hot_path(benchmark):
    delay = float(os.environ.get("PLANTED_DELAY", "0.02"))
    benchmark.pedantic(time.sleep, args=(delay,), rounds=5, iterations=1)
'''


def _make(target, tmp_path, delay):
    env = {**os.environ, "PLANTED_DELAY": str(delay)}
    return subprocess.run(["make", "-s", "-C", str(REPO), target, f"BENCH_PATHS={tmp_path / 'bench_planted.py'}",
                           f"BENCH_STORAGE={tmp_path / 'storage'}"], capture_output=True, text=True, env=env, timeout=300)


def test_bench_compare_fails_on_a_planted_slowdown_only(tmp_path):
    (tmp_path / "bench_planted.py").write_text(PLANTED)
    saved = _make("bench", tmp_path, 0.02)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert list((tmp_path / "storage").rglob("*.json"))
    unchanged = _make("bench-compare", tmp_path, 0.02)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    slower = _make("bench-compare", tmp_path, 0.04)
    assert slower.returncode != 0
    assert "Performance has regressed" in slower.stdout + slower.stderr
