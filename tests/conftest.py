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


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster for the whole test session (starting one costs seconds)."""
    import os

    for variable, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"),
                            ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"),
                            ("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")):
        os.environ.setdefault(variable, value)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
