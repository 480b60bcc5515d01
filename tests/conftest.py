import pytest

from byol_bench.config import make_config

# A trial small enough for unit tests: synthetic data, a few steps, a short probe.
TINY = dict(dataset="synthetic", subset=256, test_subset=100, batch_size=64, epochs=2, probe_epochs=5,
            hidden_dim=64, projection_dim=32, knn_k=20, threads=1)


@pytest.fixture
def tiny_config():
    def build(**overrides):
        return make_config({**TINY, **overrides})

    return build
