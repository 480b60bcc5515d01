"""Two augmented views per image: lightly's recipes, run batched on tensors (default) or per image in PIL.

A ``ViewRecipe`` holds the parameters of one of lightly's view transforms (BYOLView1Transform,
BYOLView2Transform, SimCLRTransform, SimSiamTransform) with lightly's defaults. ``adapt`` fits a
recipe to the data: grayscale images get no saturation/hue jitter and no random grayscale, and images
of 32 px or less get no blur (as in lightly's CIFAR-10 benchmarks).

The tensor path draws every random parameter per sample and runs on the training device; the PIL
path hands the same recipe to lightly's own transforms in DataLoader workers (the reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align


@dataclass(frozen=True)
class ViewRecipe:
    min_scale: float = 0.08
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0


# lightly 1.6 defaults of each method's transforms.
BYOL_VIEWS = (ViewRecipe(), ViewRecipe(blur_prob=0.1, solarize_prob=0.2))
_SIMCLR_VIEW = ViewRecipe(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_prob=0.5)
SIMCLR_VIEWS = (_SIMCLR_VIEW, _SIMCLR_VIEW)
_SIMSIAM_VIEW = ViewRecipe(min_scale=0.2, saturation=0.4, blur_prob=0.5)
SIMSIAM_VIEWS = (_SIMSIAM_VIEW, _SIMSIAM_VIEW)
RECIPES = {"byol": BYOL_VIEWS, "simclr": SIMCLR_VIEWS, "simsiam": SIMSIAM_VIEWS}


def adapt(recipe: ViewRecipe, image_size: int, channels: int) -> ViewRecipe:
    if channels == 1:
        recipe = replace(recipe, saturation=0.0, hue=0.0, grayscale_prob=0.0)
    if image_size <= 32:
        recipe = replace(recipe, blur_prob=0.0)
    return recipe


# --- batched tensor augmentation -----------------------------------------------------------------


def _uniform(low: float, high: float, n: int, g: torch.Generator, device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _coin(p: float, n: int, g: torch.Generator, device) -> Tensor:
    return torch.rand(n, generator=g, device=device) < p


def _crop_boxes(n: int, size: int, min_scale: float, g: torch.Generator, device) -> Tensor:
    """RandomResizedCrop's boxes (scale, ratio 3/4..4/3, 10 tries, else the whole image), one per sample."""
    tries = 10
    area = size * size * _uniform(min_scale, 1.0, n * tries, g, device)
    log_ratio = _uniform(math.log(3 / 4), math.log(4 / 3), n * tries, g, device)
    w = torch.sqrt(area * torch.exp(log_ratio)).view(n, tries)
    h = torch.sqrt(area / torch.exp(log_ratio)).view(n, tries)
    fits = (w <= size) & (h <= size)
    first = fits.float().argmax(dim=1)  # first try that fits
    w = torch.where(fits.any(1), w.gather(1, first[:, None]).squeeze(1), torch.full_like(w[:, 0], size))
    h = torch.where(fits.any(1), h.gather(1, first[:, None]).squeeze(1), torch.full_like(h[:, 0], size))
    x0 = (size - w) * torch.rand(n, generator=g, device=device)
    y0 = (size - h) * torch.rand(n, generator=g, device=device)
    return torch.stack([torch.arange(n, device=device, dtype=w.dtype), x0, y0, x0 + w, y0 + h], dim=1)


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


def _jitter(x: Tensor, recipe: ViewRecipe, g: torch.Generator) -> Tensor:
    """ColorJitter applied with probability ``jitter_prob``; unselected samples get identity factors."""
    n, device = x.shape[0], x.device
    on = _coin(recipe.jitter_prob, n, g, device)
    ident = torch.ones(n, device=device)
    brightness = torch.where(on, _uniform(1 - recipe.brightness, 1 + recipe.brightness, n, g, device), ident)
    contrast = torch.where(on, _uniform(1 - recipe.contrast, 1 + recipe.contrast, n, g, device), ident)
    saturation = torch.where(on, _uniform(1 - recipe.saturation, 1 + recipe.saturation, n, g, device), ident)
    hue = torch.where(on, _uniform(-recipe.hue, recipe.hue, n, g, device), 0 * ident)
    # torchvision applies the four in a random order; here one random order per batch.
    for op in torch.randperm(4, generator=g, device=device).tolist():
        if op == 0:
            x = (x * brightness[:, None, None, None]).clamp(0, 1)
        elif op == 1:
            x = _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), contrast)
        elif op == 2 and recipe.saturation > 0:
            x = _blend(x, _gray(x).expand_as(x), saturation)
        elif op == 3 and recipe.hue > 0:
            x = _shift_hue(x, hue)
    return x


def _blur(x: Tensor, recipe: ViewRecipe, g: torch.Generator) -> Tensor:
    """Gaussian blur with a per-sample sigma, as separable depthwise convolutions."""
    n, c, h, w = x.shape
    on = _coin(recipe.blur_prob, n, g, x.device)
    sigma = _uniform(*recipe.blur_sigma, n, g, x.device)
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


def augment(images: Tensor, recipe: ViewRecipe, size: int, g: torch.Generator) -> Tensor:
    """One view of a batch: uint8 (N, C, H, W) in, float in [0, 1] (N, C, size, size) out."""
    n, device = images.shape[0], images.device
    x = images.float().div_(255)
    boxes = _crop_boxes(n, images.shape[-1], recipe.min_scale, g, device)
    # One bilinear sample per output pixel: exact for crops no larger than the output (always the case here).
    x = roi_align(x, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    flip = _coin(recipe.hflip_prob, n, g, device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if recipe.jitter_prob > 0:
        x = _jitter(x, recipe, g)
    if recipe.grayscale_prob > 0 and x.shape[1] == 3:
        gray = _coin(recipe.grayscale_prob, n, g, device)
        x = torch.where(gray[:, None, None, None], _gray(x).expand_as(x), x)
    if recipe.blur_prob > 0:
        x = _blur(x, recipe, g)
    if recipe.solarize_prob > 0:
        solarize = _coin(recipe.solarize_prob, n, g, device)[:, None, None, None]
        x = torch.where(solarize & (x >= 128 / 255), 1 - x, x)
    return x


def normalize(x: Tensor, mean, std) -> Tensor:
    mean = torch.tensor(mean, device=x.device, dtype=x.dtype)[None, :, None, None]
    std = torch.tensor(std, device=x.device, dtype=x.dtype)[None, :, None, None]
    return (x - mean) / std


class TensorViews:
    """Makes both views of a uint8 batch on its device, seeded."""

    def __init__(self, recipes, image_size: int, channels: int, mean, std, seed: int, device):
        self.recipes = [adapt(r, image_size, channels) for r in recipes]
        self.size = image_size
        # Built once: the training step would otherwise copy them to the device twice per batch.
        self.mean = torch.tensor(mean, device=device)[None, :, None, None]
        self.std = torch.tensor(std, device=device)[None, :, None, None]
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return tuple((augment(images, r, self.size, self.generator) - self.mean) / self.std for r in self.recipes)


# --- PIL reference path: lightly's own transforms ------------------------------------------------


def lightly_transform(recipe: ViewRecipe, image_size: int, mean, std):
    """lightly's view transform (PIL in, normalised tensor out) with this recipe's parameters."""
    from lightly.transforms.byol_transform import BYOLView2Transform

    # BYOLView2Transform exposes every knob of a recipe (SimCLR's and SimSiam's views are the same ops).
    return BYOLView2Transform(
        input_size=image_size, cj_prob=recipe.jitter_prob, cj_strength=1.0, cj_bright=recipe.brightness,
        cj_contrast=recipe.contrast, cj_sat=recipe.saturation, cj_hue=recipe.hue, min_scale=recipe.min_scale,
        random_gray_scale=recipe.grayscale_prob, gaussian_blur=recipe.blur_prob, sigmas=recipe.blur_sigma,
        solarization_prob=recipe.solarize_prob, hf_prob=recipe.hflip_prob,
        normalize={"mean": list(mean), "std": list(std)},
    )


class PILViewDataset(torch.utils.data.Dataset):
    """Both views of one image through lightly's PIL transforms (for DataLoader workers)."""

    def __init__(self, images: Tensor, recipes, image_size: int, channels: int, mean, std):
        self.images = images
        self.transforms = [lightly_transform(adapt(r, image_size, channels), image_size, mean, std) for r in recipes]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from torchvision.transforms.functional import to_pil_image

        image = to_pil_image(self.images[index])
        return tuple(t(image) for t in self.transforms)
