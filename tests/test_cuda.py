"""Checks of the CUDA path; they skip cleanly where no CUDA device is present (CI, laptops)."""

import time

import pytest
import torch

from byol_bench.models.methods import BUILT_IN_METHODS, METHODS
from byol_bench.trial.batches import ahead_on_side_stream
from byol_bench.trial.instrument import StepClock
from byol_bench.trial.run import run_trial
from byol_bench.trial.views import TensorViews

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_views_run_on_the_gpu_and_are_seeded():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    make = lambda: TensorViews(METHODS["byol"].views, 32, 3, (0.5,) * 3, (0.25,) * 3, seed=0, device="cuda")  # noqa: E731
    view0, view1 = make()(images)
    assert view0.is_cuda and view0.shape == (64, 3, 32, 32) and not torch.equal(view0, view1)
    torch.testing.assert_close(make()(images)[0], view0)


def test_views_made_ahead_on_a_side_stream_are_the_views_made_in_series():
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, device="cuda")
    batches = torch.randperm(256, device="cuda").split(64)

    def make_views():  # a fresh, seeded view maker
        views = TensorViews(METHODS["byol"].views, 32, 3, (0.5,) * 3, (0.25,) * 3, seed=0, device="cuda")
        return lambda batch: views(images[batch])

    serial = list(map(make_views(), batches))
    ahead = list(ahead_on_side_stream(make_views(), batches, torch.device("cuda")))
    torch.cuda.synchronize()
    assert len(ahead) == len(serial) == 4
    for made_ahead, made_in_series in zip(ahead, serial):
        for a, b in zip(made_ahead, made_in_series):
            assert torch.equal(a, b)


@pytest.mark.parametrize("method", sorted(BUILT_IN_METHODS))
def test_a_trial_runs_on_the_gpu(method, tiny_config):
    result = run_trial(tiny_config(method=method, device="cuda", backbone="resnet18"), log=lambda line: None)
    assert result.status == "ok" and result.run.device.startswith("cuda")
    assert result.metrics.peak_memory_bytes > 0 and result.metrics.images_per_s > 0
    assert 0 <= result.metrics.knn_top1 <= 1
    assert result["provenance"]["device_name"] == torch.cuda.get_device_name()


def test_the_step_clock_times_the_gpu_without_making_the_host_wait():
    """Five 'steps' of ten 4096² products each: the host queues them all at once, and the event times add up
    to the wall time the GPU took."""
    clock, a = StepClock(torch.device("cuda")), torch.randn(4096, 4096, device="cuda")
    a @ a  # cuBLAS starts up outside the timing
    torch.cuda.synchronize()
    host_start = time.perf_counter()
    start = clock.now()
    for _ in range(5):
        got_batch = clock.now()
        for _ in range(10):
            a @ a
        clock.add(start, got_batch, clock.now())
        start = clock.now()
    queued = time.perf_counter() - host_start
    step_times, data_waits = clock.times()
    wall = time.perf_counter() - host_start
    assert queued < 0.5 * wall
    assert sum(step_times) == pytest.approx(wall, rel=0.2)
    assert all(0 <= wait < 0.05 * step for wait, step in zip(data_waits, step_times))
