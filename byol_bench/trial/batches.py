"""What a trial trains on, batch after batch: a seeded order of each rank's images per epoch, and the views of
each batch, made on the training device (``augment: tensor``, on CUDA a batch ahead on a side stream) or by
DataLoader workers with PIL transforms (``augment: pil``). The same (seed, epoch) gives the same batches and
views, so a resumed trial repeats them."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from byol_bench.config import TrialConfig
from byol_bench.data.datasets import ImageData
from byol_bench.models.methods import METHODS, multi_crop
from byol_bench.trial.distributed import rank, world_size
from byol_bench.trial.views import PILViewDataset, TensorViews, ViewRecipe


DEVICE_RESIDENT_MAX_BYTES = 2 * 2**30  # a pretraining set up to this size is copied to the GPU whole, once


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch's shuffling and augmentation derive from (seed, epoch): a resumed trial repeats them."""
    return seed * 100_003 + epoch


def epoch_order(cfg: TrialConfig, num_images: int, epoch: int) -> Tensor:
    """This rank's images for ``epoch``, batch after batch: one seeded shuffle cut into global batches
    (the remainder dropped), each global batch split into the ranks' consecutive shares."""
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)))
    steps = num_images // cfg.global_batch_size
    return order[: steps * cfg.global_batch_size].view(steps, world_size(), cfg.batch_size)[:, rank()].reshape(-1)


def view_recipes(cfg: TrialConfig, image_size: int) -> list[ViewRecipe]:
    """The trial's crops: two global views of ``view_size`` from its method's recipe (or the one ``views`` names,
    at ``crop_min_scale``), then for a multi-crop method ``local_crops`` local crops of ``local_crop_size``
    (half the global views' side unless given); the colour jitter of each scaled by ``jitter_strength``."""
    recipes = list(METHODS[cfg.method if cfg.views == "method" else cfg.views].views)
    if cfg.crop_min_scale is not None:
        recipes = [replace(recipe, min_scale=cfg.crop_min_scale) for recipe in recipes]
    if cfg.view_size is not None:
        recipes = [replace(recipe, size=cfg.view_size) for recipe in recipes]
    method = METHODS[cfg.method]
    if multi_crop(method):
        local_size = cfg.local_crop_size or cfg.global_view_size(image_size) // 2
        recipes += [replace(method.local_view, size=local_size)] * cfg.local_crops
    strength = cfg.jitter_strength
    return [replace(recipe, brightness=strength * recipe.brightness, contrast=strength * recipe.contrast,
                    saturation=strength * recipe.saturation, hue=strength * recipe.hue) for recipe in recipes]


def make_batches(cfg: TrialConfig, data: ImageData, recipes, device: torch.device):
    """A function epoch -> iterator of this rank's batches of views on ``device``, seeded per epoch."""
    images = data.pretrain_images
    if cfg.augment == "tensor":
        # On a GPU a small pretraining set is copied over once; a larger one stays in host memory (the image store's
        # memory map) and each batch is gathered, pinned and copied ahead of its step. A CPU reads the map directly.
        resident = device.type != "cuda" or images.numel() <= DEVICE_RESIDENT_MAX_BYTES
        source = images.to(device) if resident else images
        views = TensorViews(recipes, data.image_size, data.channels, data.mean, data.std, cfg.seed, device,
                            rank(), world_size())

        def make(batch: Tensor):
            if resident:
                return views(source[batch])
            return views(source[batch].pin_memory().to(device, non_blocking=True))

        def tensor_batches(epoch: int):
            views.seed(epoch_seed(cfg.seed, epoch))
            order = epoch_order(cfg, len(images), epoch)
            batches = (order.to(device) if resident else order).split(cfg.batch_size)
            yield from ahead_on_side_stream(make, batches, device) if device.type == "cuda" else map(make, batches)

        return tensor_batches
    dataset = PILViewDataset(images, recipes, data.image_size, data.channels, data.mean, data.std)

    def pil_batches(epoch: int):
        # The generator seeds the loader workers' transforms: per epoch (a resumed trial repeats them) and per rank.
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=cfg.batch_size, sampler=epoch_order(cfg, len(images), epoch).tolist(),
            num_workers=cfg.loader_workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) * 1009 + rank()))
        for views in loader:
            yield tuple(view.to(device, non_blocking=True) for view in views)

    return pil_batches


def ahead_on_side_stream(make_views, batches, device: torch.device):
    """``make_views(batch)`` for each batch, each made on a side CUDA stream while the previous batch trains
    on the current one: the same views, drawn in the same order, as made in series."""
    side, current = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    side.wait_stream(current)  # the images and this epoch's order are ready before the first views

    def make(batch):
        with torch.cuda.stream(side):
            return make_views(batch)

    batches = iter(batches)
    upcoming = make(next(batches))
    for batch in batches:
        current.wait_stream(side)
        ready, upcoming = upcoming, make(batch)  # queued on the side stream: it overlaps the step on `ready`
        yield _owned_by(ready, current)
    current.wait_stream(side)
    yield _owned_by(upcoming, current)


def _owned_by(views, stream):
    """Views made on another stream, marked as used on ``stream``: the allocator keeps their memory until it is done."""
    for view in views:
        view.record_stream(stream)
    return views
