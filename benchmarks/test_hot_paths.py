"""Micro-benchmarks of the hot paths (pytest-benchmark): `make bench` saves a run, `make bench-compare`
fails when a median got slower than the last saved run by more than the tolerance.

Fixed inputs, so that two runs measure the same work: a training step per method with its default views
(DINO's and SwAV's local crops included; small CNN at 28 px, ResNet-18 at 32 px), feature extraction for the
evaluation (the CPU's default batch and the GPU's), the weighted kNN against a 50k x 512 bank, the linear probe
on cached features, and the two-view augmentation (batched tensors and lightly's PIL transforms).
"""

import pytest
import torch

from byol_bench.config import make_config
from byol_bench.models.methods import METHODS, uses_momentum
from byol_bench.trial.batches import view_recipes
from byol_bench.trial.evaluate import (CPU_EXTRACT_BATCH, EXTRACT_BATCH, ProbeRecipe, extract_features, knn_predict,
                                       linear_probe)
from byol_bench.trial.loop import train_step
from byol_bench.trial.run import build_method, build_optimizer
from byol_bench.trial.views import PILViewDataset, TensorViews

# (backbone, channels, image size, batch): ResNet-18 on a CPU is slow, so its batch is small.
STEP_SETUPS = {"small-cnn-28px": ("small-cnn", 1, 28, 256), "resnet18-32px": ("resnet18", 3, 32, 32)}


def _images(n, channels, size):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize("setup", sorted(STEP_SETUPS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_training_step(benchmark, method, setup):
    backbone_name, channels, size, batch = STEP_SETUPS[setup]
    torch.manual_seed(0)
    cfg = make_config({"method": method, "backbone": backbone_name})
    # The trial's own model and step, with the default speed switches (channels_last), so the benchmark tracks
    # what trials run.
    model = build_method(cfg, channels, size, torch.device("cpu"))
    optimizer = build_optimizer(cfg, model)
    views = TensorViews(view_recipes(cfg, size), size, channels, (0.5,) * channels, (0.25,) * channels, seed=0,
                        device="cpu")
    batch_views = views(_images(batch, channels, size))

    def step():
        train_step(cfg, model, optimizer, batch_views, 0.01)
        if uses_momentum(model):
            model.update_target(0.99)

    step()  # allocate once outside the timing
    benchmark.pedantic(step, rounds=5 if backbone_name == "small-cnn" else 3, iterations=1)


@pytest.mark.parametrize("batch", [CPU_EXTRACT_BATCH, EXTRACT_BATCH], ids=["cpu-batch", "gpu-batch"])
@pytest.mark.parametrize("setup", sorted(STEP_SETUPS))
def test_feature_extraction(benchmark, setup, batch):
    backbone_name, channels, size, _ = STEP_SETUPS[setup]
    torch.manual_seed(0)
    cfg = make_config({"method": "byol", "backbone": backbone_name})
    backbone = build_method(cfg, channels, size, torch.device("cpu")).backbone  # channels_last, as trials run it
    images = _images(2048 if backbone_name == "small-cnn" else 512, channels, size)
    benchmark.pedantic(extract_features, args=(backbone, images, (0.5,) * channels, (0.25,) * channels, "cpu", batch),
                       rounds=3, iterations=1)


def test_knn_50k_bank(benchmark):
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(50_000, 512, generator=g), torch.randn(1_000, 512, generator=g)
    labels = torch.randint(0, 10, (50_000,), generator=g)
    benchmark.pedantic(knn_predict, args=(bank, labels, queries, 10, 200, 0.1), rounds=3, iterations=1)


def test_linear_probe_on_cached_features(benchmark):
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(10_000, 512, generator=g), torch.randint(0, 10, (10_000,), generator=g)
    benchmark.pedantic(linear_probe, args=(features[:8000], labels[:8000], features[8000:], 10, ProbeRecipe(epochs=20)),
                       rounds=3, iterations=1)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)], ids=["gray-28px", "rgb-32px"])
def test_tensor_views(benchmark, channels, size):
    views = TensorViews(METHODS["byol"].views, size, channels, (0.5,) * channels, (0.25,) * channels, seed=0, device="cpu")
    images = _images(256, channels, size)
    benchmark.pedantic(views, args=(images,), rounds=10, iterations=1)


def test_pil_views(benchmark):
    dataset = PILViewDataset(_images(256, 3, 32), METHODS["byol"].views, 32, 3, (0.5,) * 3, (0.25,) * 3)
    benchmark.pedantic(lambda: [dataset[i] for i in range(len(dataset))], rounds=3, iterations=1)
