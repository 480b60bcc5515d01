"""Seeded, class-stratified subsets: the same images for the same seed, every class keeping its share."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_subset(labels: Tensor, count: int, seed: int) -> Tensor:
    """Indices of a seeded subset of ``count`` items with the class proportions of ``labels``."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    shuffled = labels[order]
    by_class = shuffled.argsort(stable=True)
    sorted_labels = shuffled[by_class]
    class_counts = torch.bincount(sorted_labels)
    class_starts = torch.cumsum(class_counts, 0) - class_counts
    rank = torch.empty_like(by_class)
    rank[by_class] = torch.arange(len(labels)) - class_starts[sorted_labels]
    # Spread each class over [0, 1) and take the first ``count``: every class keeps its share.
    position = (rank.double() + 0.5) / class_counts[shuffled].double()
    return order[position.argsort(stable=True)[:count]].sort().values
