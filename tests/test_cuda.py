"""Checks of the CUDA path; they skip cleanly where no CUDA device is present (CI, laptops)."""

import pytest
import torch

from byol_bench.train import run_trial
from byol_bench.views import BYOL_VIEWS, TensorViews

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_views_run_on_the_gpu_and_are_seeded():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device="cuda")
    make = lambda: TensorViews(BYOL_VIEWS, 32, 3, (0.5,) * 3, (0.25,) * 3, seed=0, device="cuda")  # noqa: E731
    view0, view1 = make()(images)
    assert view0.is_cuda and view0.shape == (64, 3, 32, 32) and not torch.equal(view0, view1)
    torch.testing.assert_close(make()(images)[0], view0)


@pytest.mark.parametrize("method", ["byol", "simclr", "simsiam"])
def test_a_trial_runs_on_the_gpu(method, tiny_config):
    result = run_trial(tiny_config(method=method, device="cuda", backbone="resnet18"), log=lambda line: None)
    assert result["status"] == "ok" and result["run"]["device"].startswith("cuda")
    assert result["metrics"]["peak_memory_bytes"] > 0 and result["metrics"]["images_per_s"] > 0
    assert 0 <= result["metrics"]["knn_top1"] <= 1
    assert result["provenance"]["device_name"] == torch.cuda.get_device_name()
