"""Augmented views of each image: lightly's recipes, run batched on tensors (default) or per image in PIL.

A ``ViewRecipe`` holds the parameters of one crop of one of lightly's view transforms (BYOLView1/2Transform,
SimCLRTransform, SimSiamTransform, the global and local crops of DINOTransform and SwaVTransform, ...) with
lightly's defaults, and its size: a trial's views are a list of such crops (two global views at the image's
size, and for multi-crop methods small local crops). ``adapt`` fits a recipe to the data: grayscale images
get no saturation/hue jitter and no random grayscale, and images of 32 px or less get no blur (as in
lightly's CIFAR-10 benchmarks).

The tensor path draws every random parameter per sample and runs on the training device; the PIL
path hands the same recipes to lightly's own transforms in DataLoader workers (the reference).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from byol_bench.models.view_recipe import ViewRecipe


def adapt(recipe: ViewRecipe, image_size: int, channels: int) -> ViewRecipe:
    if channels == 1:
        recipe = replace(recipe, saturation=0.0, hue=0.0, grayscale_prob=0.0)
    if image_size <= 32:
        recipe = replace(recipe, blur_prob=0.0)
    return recipe


# --- batched tensor augmentation -----------------------------------------------------------------


class Draws:
    """Per-sample random numbers for rows ``rows`` of a batch of ``total`` samples.

    Every rank of a DDP trial draws the whole global batch's numbers from the same seeded generator and
    keeps its own rows, so a trial's views do not depend on how its batch is split across workers.
    """

    def __init__(self, generator: torch.Generator, total: int, rows: slice, host_generator: torch.Generator | None = None):
        self.generator, self.total, self.rows = generator, total, rows
        self.host_generator = host_generator or generator  # for draws the host needs, so a GPU never syncs for them

    def uniform(self, low: float, high: float, *shape: int) -> Tensor:
        values = torch.rand(self.total, *shape, generator=self.generator, device=self.generator.device)[self.rows]
        return low + (high - low) * values

    def coin(self, p: float) -> Tensor:
        return self.uniform(0.0, 1.0) < p

    def permutation(self, n: int) -> list[int]:
        """One order shared by the whole batch (and by every rank)."""
        return torch.randperm(n, generator=self.host_generator, device=self.host_generator.device).tolist()


def _crop_boxes(draws: Draws, size: int, min_scale: float, max_scale: float) -> Tensor:
    """RandomResizedCrop's boxes (scale, ratio 3/4..4/3, 10 tries, else the whole image), one per sample."""
    tries = 10
    area = size * size * draws.uniform(min_scale, max_scale, tries)
    log_ratio = draws.uniform(math.log(3 / 4), math.log(4 / 3), tries)
    w = torch.sqrt(area * torch.exp(log_ratio))
    h = torch.sqrt(area / torch.exp(log_ratio))
    fits = (w <= size) & (h <= size)
    first = fits.float().argmax(dim=1)  # first try that fits
    w = torch.where(fits.any(1), w.gather(1, first[:, None]).squeeze(1), torch.full_like(w[:, 0], size))
    h = torch.where(fits.any(1), h.gather(1, first[:, None]).squeeze(1), torch.full_like(h[:, 0], size))
    x0 = (size - w) * draws.uniform(0.0, 1.0)
    y0 = (size - h) * draws.uniform(0.0, 1.0)
    return torch.stack([torch.arange(len(w), device=w.device, dtype=w.dtype), x0, y0, x0 + w, y0 + h], dim=1)


def _gray(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor[:, None, None, None] * x + (1 - factor[:, None, None, None]) * other).clamp(0, 1)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` (fractions of a turn) through HSV, as torchvision's adjust_hue does."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = torch.where(delta > 0, hue / 6 % 1.0, torch.zeros_like(hue))
    hue = (hue + shift[:, None, None]) % 1.0
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    # HSV -> RGB with the continuous form: channel k = v - v*s*clamp(min(k', 4-k'), 0, 1), k' = (n + 6h) mod 6
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (offset + hue * 6) % 6
        channels.append(maxc - maxc * sat * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels, dim=1)


def _jitter(x: Tensor, recipe: ViewRecipe, draws: Draws) -> Tensor:
    """ColorJitter applied with probability ``jitter_prob``; unselected samples get identity factors."""
    on = draws.coin(recipe.jitter_prob)
    ident = torch.ones(x.shape[0], device=x.device)
    brightness = torch.where(on, draws.uniform(1 - recipe.brightness, 1 + recipe.brightness), ident)
    contrast = torch.where(on, draws.uniform(1 - recipe.contrast, 1 + recipe.contrast), ident)
    saturation = torch.where(on, draws.uniform(1 - recipe.saturation, 1 + recipe.saturation), ident)
    hue = torch.where(on, draws.uniform(-recipe.hue, recipe.hue), 0 * ident)
    # torchvision applies the four in a random order; here one random order per batch.
    for op in draws.permutation(4):
        if op == 0:
            x = (x * brightness[:, None, None, None]).clamp(0, 1)
        elif op == 1:
            x = _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), contrast)
        elif op == 2 and recipe.saturation > 0:
            x = _blend(x, _gray(x).expand_as(x), saturation)
        elif op == 3 and recipe.hue > 0:
            x = _shift_hue(x, hue)
    return x


def _blur(x: Tensor, recipe: ViewRecipe, draws: Draws) -> Tensor:
    """Gaussian blur with a per-sample sigma, as separable depthwise convolutions."""
    n, c, h, w = x.shape
    on = draws.coin(recipe.blur_prob)
    sigma = draws.uniform(*recipe.blur_sigma)
    radius = min(int(math.ceil(3 * recipe.blur_sigma[1])), (min(h, w) - 1) // 2)
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None] ** 2))
    delta = (taps == 0).to(x.dtype).expand(n, -1)
    kernel = torch.where(on[:, None], kernel / kernel.sum(1, keepdim=True), delta)
    kernel = kernel.repeat_interleave(c, dim=0)  # one kernel per (sample, channel)
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=n * c)
    return flat.reshape(n, c, h, w)


def augment(images: Tensor, recipe: ViewRecipe, size: int, draws: Draws) -> Tensor:
    """One view of a batch: uint8 (N, C, H, W) in, float in [0, 1] (N, C, size, size) out."""
    x = images.float().div_(255)
    boxes = _crop_boxes(draws, images.shape[-1], recipe.min_scale, recipe.max_scale)
    # A view at the image's size: one bilinear sample per output pixel, exact for a crop no larger than the
    # output. A smaller local crop may cover more pixels than it has: each of its pixels averages ceil(crop /
    # output) samples a side, so that shrinking does not alias (PIL's resize filters so too).
    shrinks = size < images.shape[-1]
    x = roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=0 if shrinks else 1, aligned=True)
    flip = draws.coin(recipe.hflip_prob)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if recipe.jitter_prob > 0:
        x = _jitter(x, recipe, draws)
    if recipe.grayscale_prob > 0 and x.shape[1] == 3:
        gray = draws.coin(recipe.grayscale_prob)
        x = torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)
    if recipe.blur_prob > 0:
        x = _blur(x, recipe, draws)
    if recipe.solarize_prob > 0:
        solarize = draws.coin(recipe.solarize_prob)[:, None, None, None]
        x = torch.where(solarize & (x >= 128 / 255), 1 - x, x)
    return x


def normalize(x: Tensor, mean, std) -> Tensor:
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std


class TensorViews:
    """Makes every view (one per recipe, each at its size) of a uint8 batch on its device, seeded.

    In a DDP trial each of ``world_size`` ranks passes its share of the global batch and gets the views
    that one worker would have made of those images (see ``Draws``).
    """

    def __init__(self, recipes, image_size: int, channels: int, mean, std, seed: int, device, rank: int = 0,
                 world_size: int = 1):
        self.recipes = [adapt(r, image_size, channels) for r in recipes]
        self.size = image_size
        # Built once: the training step would otherwise copy them to the device twice per batch.
        self.mean = torch.tensor(mean, device=device)[None, :, None, None]
        self.std = torch.tensor(std, device=device)[None, :, None, None]
        self.generator = torch.Generator(device=device)
        self.host_generator = self.generator if self.generator.device.type == "cpu" else torch.Generator()
        self.seed(seed)
        self.rank, self.world_size = rank, world_size

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self.host_generator.manual_seed(seed)

    def __call__(self, images: Tensor) -> tuple[Tensor, ...]:
        n = len(images)
        draws = Draws(self.generator, n * self.world_size, slice(self.rank * n, (self.rank + 1) * n), self.host_generator)
        return tuple((augment(images, r, r.size or self.size, draws) - self.mean) / self.std for r in self.recipes)


# --- PIL reference path: lightly's own transforms ------------------------------------------------


def lightly_transform(recipe: ViewRecipe, size: int, mean, std):
    """lightly's view transform (PIL in, normalised tensor out) with this recipe's parameters, at ``size``."""
    from lightly.transforms.byol_transform import BYOLView2Transform
    from lightly.transforms.torchvision_v2_compatibility import torchvision_transforms as T

    # BYOLView2Transform exposes every knob of a recipe (SimCLR's, SimSiam's, SwAV's and DINO's crops are the
    # same ops) but the crop's largest area, which a local crop needs: its crop is then the one lightly's
    # MultiCropTranform (SwaVTransform) makes, RandomResizedCrop over [min_scale, max_scale].
    view = BYOLView2Transform(
        input_size=size, cj_prob=recipe.jitter_prob, cj_strength=1.0, cj_bright=recipe.brightness,
        cj_contrast=recipe.contrast, cj_sat=recipe.saturation, cj_hue=recipe.hue, min_scale=recipe.min_scale,
        random_gray_scale=recipe.grayscale_prob, gaussian_blur=recipe.blur_prob, sigmas=recipe.blur_sigma,
        solarization_prob=recipe.solarize_prob, hf_prob=recipe.hflip_prob,
        normalize={"mean": list(mean), "std": list(std)},
    )
    if recipe.max_scale < 1:
        view.transform.transforms[0] = T.RandomResizedCrop(size, scale=(recipe.min_scale, recipe.max_scale))
    return view


class PILViewDataset(torch.utils.data.Dataset):
    """Every view (one per recipe, each at its size) of one image through lightly's PIL transforms (for
    DataLoader workers)."""

    def __init__(self, images: Tensor, recipes, image_size: int, channels: int, mean, std):
        self.images = images
        self.transforms = [lightly_transform(adapt(r, image_size, channels), r.size or image_size, mean, std)
                           for r in recipes]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from torchvision.transforms.functional import to_pil_image

        image = to_pil_image(self.images[index])
        return tuple(t(image) for t in self.transforms)
