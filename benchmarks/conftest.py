import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _fixed_threads():
    """Benchmarks compare across runs: pin the thread count so runs measure the same thing."""
    torch.set_num_threads(2)
