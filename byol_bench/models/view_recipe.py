"""What a method declares about its views: the parameters of each crop, lightly's by default. ``trial.views`` makes
the views from these recipes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewRecipe:
    """One view's (or crop's) parameters; the defaults are lightly's (each method file holds its own recipes)."""

    min_scale: float = 0.08  # the crop's area, as a fraction of the image's, is drawn from [min_scale, max_scale]
    max_scale: float = 1.0
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
    size: int | None = None  # the crop's side in px; None: the image's (a global view)
