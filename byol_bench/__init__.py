"""byol-bench: benchmark self-supervised learning methods (BYOL, SimCLR, SimSiam, ...) on Ray Tune."""

__version__ = "0.1.0"
