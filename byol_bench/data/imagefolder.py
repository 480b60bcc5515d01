"""ImageFolder trees (``root/<class>/<image>``, or ``root/train`` and ``root/val`` of them), decoded into the image
store in parallel over the node's CPUs: each image's shorter side resized to the stored size, then its centre square
(the stated rule: a random-resized crop then draws from all of that square, as the papers' pipelines draw from the
image; an image far from square loses the ends of its long side)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from byol_bench.data.store import Split
from byol_bench.data.subsets import stratified_subset
from byol_bench.errors import UserError

DECODE_BATCH = 256


def imagefolder_source(root: Path, download: bool) -> Path:
    if not root.is_dir():
        raise UserError(f"--data-dir {root} is not a folder; give the root of a <class>/<image> tree")
    return root


def _samples(root: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, test) samples: root/train and root/val, else a seeded stratified fifth of root held out as test."""
    from torchvision.datasets import ImageFolder

    try:
        if (root / "train").is_dir() and (root / "val").is_dir():
            train_folder, val_folder = ImageFolder(str(root / "train")), ImageFolder(str(root / "val"))
            if train_folder.class_to_idx != val_folder.class_to_idx:  # else val's labels would shift silently
                raise UserError(f"{root}/train and {root}/val hold different classes; give both the same class folders")
            return train_folder.samples, val_folder.samples
        samples = ImageFolder(str(root)).samples
    except (FileNotFoundError, RuntimeError) as error:
        raise UserError(f"--data-dir {root} holds no <class>/<image> tree ({error})") from None
    labels = torch.tensor([label for _, label in samples])
    held_out = set(stratified_subset(labels, len(samples) // 5, seed=0).tolist())
    return ([s for i, s in enumerate(samples) if i not in held_out], [s for i, s in enumerate(samples) if i in held_out])


def imagefolder_splits(root: Path, size: int) -> dict[str, Split]:
    train, test = _samples(root)
    return {"train": _decoded(train, size), "test": _decoded(test, size)}


def _decode(path: str, size: int) -> np.ndarray:
    from PIL import Image
    from torchvision.transforms import functional as TF

    with Image.open(path) as image:
        image = TF.center_crop(TF.resize(image.convert("RGB"), size), [size, size])
    return np.asarray(image).transpose(2, 0, 1)


class _DecodeBatch:
    """A DataLoader's collate: a batch of consecutive indices decoded, with where it starts (picklable for workers)."""

    def __init__(self, samples: list[tuple[str, int]], size: int):
        self.paths, self.size = [path for path, _ in samples], size

    def __call__(self, indices: list[int]) -> tuple[int, np.ndarray]:
        return indices[0], np.stack([_decode(self.paths[i], self.size) for i in indices])


def _decoded(samples: list[tuple[str, int]], size: int) -> Split:
    """A split decoded by DataLoader workers, one per CPU of the node, a batch at a time in order."""
    from torch.utils.data import DataLoader

    def batches():
        # A generator of its own: the workers' seeds are not drawn from the trial's (a cold store's trial would
        # otherwise initialise its model from other random numbers than a warm store's).
        yield from DataLoader(range(len(samples)), batch_size=DECODE_BATCH, num_workers=os.cpu_count() or 1,
                              collate_fn=_DecodeBatch(samples, size), generator=torch.Generator())

    return Split(len(samples), np.array([label for _, label in samples], dtype=np.int64), batches)
