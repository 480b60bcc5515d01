import os

import pytest

from byol_bench.config import make_config
from byol_bench.on_ray.cluster import quiet_ray

# The files of the longest tests (real trials, Ray sweeps) first: pytest-xdist hands out whole files in
# collection order (the Makefile's --no-loadscope-reorder), and a long file handed out last would end the run alone.
LONGEST_FIRST = ("test_compare.py", "test_distributed.py", "test_sweep.py", "test_tune.py", "test_tracking.py",
                 "test_trial.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


# A trial small enough for unit tests: synthetic data at 16 px, a few steps, a short probe.
TINY = dict(dataset="synthetic", image_size=16, subset=256, test_subset=100, batch_size=64, epochs=2, probe_epochs=5,
            hidden_dim=64, projection_dim=32, knn_k=20, threads=1)
# The method-specific knobs of a tiny trial: memory banks no larger than the smallest pretraining set the tests
# use (128 images), fewer prototypes, and two local crops.
TINY_METHOD_KNOBS = {"moco": {"memory_bank_size": 128}, "nnclr": {"memory_bank_size": 128},
                     "dino": {"prototypes": 256, "local_crops": 2}, "swav": {"prototypes": 64, "local_crops": 2}}


def tiny(method: str, **overrides) -> dict:
    """TINY's knobs for a trial of ``method``, with its tiny method-specific knobs and ``overrides``."""
    return {**TINY, "method": method, **TINY_METHOD_KNOBS.get(method, {}), **overrides}


def pretrained(knobs: dict, break_method=None):
    """(the method's weights, the TrialState) after pretraining with ``knobs``: no floors, no evaluation.
    ``break_method(method)`` changes the method before training."""
    from byol_bench.trial.loop import pretrain
    from byol_bench.trial.run import setup
    from byol_bench.trial.state import TrialState

    cfg = make_config(knobs)
    data, method, model, optimizer = setup(cfg)
    if break_method is not None:
        break_method(method)
    state = TrialState(floors={})
    pretrain(cfg, method, model, optimizer, data, state, log=lambda line: None)
    return method.state_dict(), state


@pytest.fixture
def tiny_config():
    def build(method: str = "byol", **overrides):
        return make_config(tiny(method, **overrides))

    return build


def quiet_fast_ray() -> None:
    """The suite's Ray environment for test clusters (local ones: no auth token), with quicker Ray Train
    health checks, which pace a DDP trial's start and end."""
    quiet_ray(local=True)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # A rank whose health check hangs (its node lost mid-call) fails its run after a minute, not Ray's ten.
    os.environ.setdefault("RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S", "60")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray cluster for the whole test session (starting one costs seconds)."""
    quiet_fast_ray()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
