from dataclasses import replace

import pytest
import torch

from byol_bench.config import make_config
from byol_bench.models.methods import METHODS
from byol_bench.trial.batches import view_recipes
from byol_bench.trial.views import Draws, PILViewDataset, TensorViews, ViewRecipe, adapt, augment


# One method per distinct set of recipes the views tests run: MoCo's views are SimSiam's, NNCLR's and DCL's
# SimCLR's, Barlow Twins' BYOL's, and VICReg's use BYOL's ops at other strengths; DINO's and SwAV's bring
# local crops.
RECIPES_OF = ["byol", "simclr", "simsiam", "dino", "swav"]


def _images(n, channels, size, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _draws(n, seed=0):
    return Draws(torch.Generator().manual_seed(seed), n, slice(0, n))


def _ramp_views(recipes, ramp, path):
    """Every view of a batch of 32 px RGB ramps, unnormalised, batched on ``path``: tensor or lightly's PIL."""
    if path == "tensor":
        return TensorViews(recipes, 32, 3, (0.0,) * 3, (1.0,) * 3, seed=0, device="cpu")(ramp)
    dataset = PILViewDataset(ramp, recipes, 32, 3, (0.0,) * 3, (1.0,) * 3)
    return [torch.stack(crops) for crops in zip(*(dataset[i] for i in range(len(ramp))))]


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (3, 64)])
@pytest.mark.parametrize("method", RECIPES_OF)
def test_views_have_the_right_shape_and_range(channels, size, method):
    mean, std = (0.5,) * channels, (0.25,) * channels
    views = TensorViews(METHODS[method].views, size, channels, mean, std, seed=0, device="cpu")
    view0, view1 = views(_images(16, channels, size))
    for view in (view0, view1):
        assert view.shape == (16, channels, size, size) and view.dtype == torch.float32
        # normalised from [0, 1]: (0 - 0.5) / 0.25 = -2 .. (1 - 0.5) / 0.25 = 2
        assert view.min() >= -2 - 1e-5 and view.max() <= 2 + 1e-5
    assert not torch.equal(view0, view1)


def test_grayscale_recipes_drop_colour_ops_and_small_images_drop_blur():
    gray_small = adapt(METHODS["byol"].views[0], 28, 1)
    assert gray_small.saturation == 0 and gray_small.hue == 0 and gray_small.grayscale_prob == 0
    assert gray_small.blur_prob == 0
    rgb_large = adapt(METHODS["byol"].views[0], 96, 3)
    assert rgb_large == METHODS["byol"].views[0]


def test_random_parameters_differ_per_sample():
    same = _images(1, 3, 32).expand(32, -1, -1, -1).contiguous()  # one image, 32 times
    out = augment(same, METHODS["simclr"].views[0], 32, _draws(len(same)))
    distinct = {tuple(v.flatten()[:50].tolist()) for v in out}
    assert len(distinct) == 32


@pytest.mark.parametrize("method", ["byol", "simclr", "dino"])
def test_a_batch_split_across_ranks_gets_the_views_of_one_worker(method):
    recipes = view_recipes(make_config({"method": method}), 40)  # DINO's: 2 global crops and 6 local ones
    images = _images(16, 3, 40)
    whole = TensorViews(recipes, 40, 3, (0.5,) * 3, (0.25,) * 3, seed=3, device="cpu")(images)
    shares = [TensorViews(recipes, 40, 3, (0.5,) * 3, (0.25,) * 3, seed=3, device="cpu", rank=rank, world_size=4)(
        images[rank * 4 : (rank + 1) * 4]) for rank in range(4)]
    assert len(whole) == len(recipes)
    for view in range(len(recipes)):
        torch.testing.assert_close(torch.cat([share[view] for share in shares]), whole[view], atol=1e-5, rtol=0)


def test_identity_recipe_returns_the_image():
    identity = ViewRecipe(min_scale=1.0, hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    images = _images(8, 3, 32)
    out = augment(images, identity, 32, _draws(len(images)))
    # The whole-image box with ratio 1 is still drawn: crops near 1.0 scale resample a little.
    assert (out * 255 - images.float()).abs().mean() < 20


def test_solarize_inverts_bright_pixels_only():
    solarize = ViewRecipe(min_scale=1.0, hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=1.0)
    images = torch.full((4, 3, 32, 32), 230, dtype=torch.uint8)
    out = augment(images, solarize, 32, _draws(len(images)))
    torch.testing.assert_close(out, torch.full_like(out, 1 - 230 / 255), atol=1e-3, rtol=0)


def test_hue_shift_matches_torchvision_a_full_turn_is_identity_and_gray_stays_gray():
    from torchvision.transforms.functional import adjust_hue

    from byol_bench.trial.views import _shift_hue

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    shifts = torch.tensor([0.1, -0.25, 0.4, -0.5])  # each sample its own shift, as the views draw them
    expected = torch.stack([adjust_hue(image, float(shift)) for image, shift in zip(x, shifts)])
    torch.testing.assert_close(_shift_hue(x, shifts), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(_shift_hue(x, torch.ones(4)), x, atol=1e-5, rtol=0)
    gray = torch.rand(4, 1, 8, 8).expand(-1, 3, -1, -1)
    torch.testing.assert_close(_shift_hue(gray, torch.full((4,), 0.3)), gray, atol=1e-5, rtol=0)


def test_views_are_seeded():
    images = _images(8, 3, 32)
    a = TensorViews(METHODS["byol"].views, 32, 3, (0.5,) * 3, (0.25,) * 3, seed=3, device="cpu")(images)
    b = TensorViews(METHODS["byol"].views, 32, 3, (0.5,) * 3, (0.25,) * 3, seed=3, device="cpu")(images)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("channels", [1, 3])
def test_pil_reference_path_gives_the_same_shapes(channels):
    dataset = PILViewDataset(_images(4, channels, 28), METHODS["byol"].views, 28, channels, (0.5,) * channels, (0.25,) * channels)
    view0, view1 = dataset[0]
    assert view0.shape == view1.shape == (channels, 28, 28)
    assert view0.min() >= -2 - 1e-5 and view0.max() <= 2 + 1e-5


@pytest.mark.parametrize("method", RECIPES_OF)
def test_tensor_views_match_lightlys_pil_views_in_distribution(method):
    """Same recipe, two implementations: pixel mean and std, per-image contrast and colourfulness agree, also for
    a local crop (dropping the colour jitter moves the std by ~0.3, always-grayscale the colourfulness by ~0.17)."""
    from byol_bench.data.datasets import make_synthetic

    import random

    import numpy as np

    images, _ = make_synthetic(800, seed=0)
    local_crop = {"local_crops": 1} if "local_crops" in METHODS[method].config_keys else {}
    recipes = view_recipes(make_config({"method": method, **local_crop}), 32)
    mean, std = (0.5,) * 3, (0.25,) * 3
    tensor_views = TensorViews(recipes, 32, 3, mean, std, seed=0, device="cpu")(images)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # lightly's transforms draw from all three
    pil = PILViewDataset(images, recipes, 32, 3, mean, std)
    pil_pairs = [pil[i] for i in range(len(images))]
    for index, tensor_view in enumerate(tensor_views):
        pil_view = torch.stack([pair[index] for pair in pil_pairs])
        assert tensor_view.shape == pil_view.shape
        assert abs(tensor_view.mean() - pil_view.mean()) < 0.06
        assert abs(tensor_view.std() - pil_view.std()) < 0.08
        contrast = lambda v: v.flatten(1).std(1).mean()  # noqa: E731 - the average within-image spread
        colourfulness = lambda v: v.std(dim=1).mean()  # noqa: E731 - spread across channels: 0 for gray
        assert abs(contrast(tensor_view) - contrast(pil_view)) < 0.08
        assert abs(colourfulness(tensor_view) - colourfulness(pil_view)) < 0.04


@pytest.mark.parametrize("method", ["dino", "swav"])
def test_multi_crop_views_come_in_their_counts_and_sizes_in_range(method):
    cfg = make_config({"method": method, "local_crops": 3, "local_crop_size": 12})
    recipes = view_recipes(cfg, 32)
    mean, std = (0.5,) * 3, (0.25,) * 3
    tensor_views = TensorViews(recipes, 32, 3, mean, std, seed=0, device="cpu")(_images(8, 3, 32))
    pil_views = PILViewDataset(_images(2, 3, 32), recipes, 32, 3, mean, std)[0]
    for views, batch in ((tensor_views, (8,)), (pil_views, ())):
        assert [tuple(view.shape) for view in views] == [(*batch, 3, 32, 32)] * 2 + [(*batch, 3, 12, 12)] * 3
        assert all(view.min() >= -2 - 1e-5 and view.max() <= 2 + 1e-5 for view in views)  # normalised from [0, 1]
    assert len(view_recipes(make_config({"method": method, "local_crops": 0}), 32)) == 2  # lightly's CIFAR-10 setting
    assert [r.size for r in view_recipes(make_config({"method": method}), 28)][2:] == [14] * 6  # the defaults


@pytest.mark.parametrize("path", ["tensor", "pil"])
@pytest.mark.parametrize("method", ["dino", "swav"])
def test_local_crops_are_smaller_regions_of_the_image(method, path):
    """On images whose pixels are their own x coordinate, a crop's range of values is the width it spans: a
    local crop (area at most max_scale of the image's, aspect at most 4/3) spans at most sqrt(max_scale * 4/3)
    of it, a global one usually much more."""
    plain = dict(hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
    recipes = [replace(recipe, **plain) for recipe in view_recipes(make_config({"method": method, "local_crops": 1}), 32)]
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(64, 3, 32, 32).contiguous()
    views = _ramp_views(recipes, ramp, path)
    spans = [view.flatten(1).amax(1) - view.flatten(1).amin(1) for view in views]
    local = METHODS[method].local_view
    assert spans[2].max() <= (local.max_scale * 4 / 3) ** 0.5 + 0.02
    assert spans[0].mean() > spans[2].mean() + 0.2 and spans[1].mean() > spans[2].mean() + 0.2


@pytest.mark.parametrize("path", ["tensor", "pil"])
def test_view_size_resizes_the_global_views_and_halves_the_local_crops(path):
    """With view_size each global view is its crop resized to that side, not a smaller crop: on images whose
    pixels are their own x coordinate a whole-image crop still spans the whole ramp. Local crops default to half
    the global views' side."""
    recipes = view_recipes(make_config({"method": "dino", "local_crops": 2, "view_size": 20}), 32)
    whole = dict(min_scale=1.0, hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0)
    recipes = [replace(recipe, **whole) for recipe in recipes[:2]] + recipes[2:]
    ramp = torch.linspace(0, 255, 32).round().to(torch.uint8).expand(8, 3, 32, 32).contiguous()
    views = _ramp_views(recipes, ramp, path)
    assert [tuple(view.shape) for view in views] == [(8, 3, 20, 20)] * 2 + [(8, 3, 10, 10)] * 2
    for view in views[:2]:
        assert (view.flatten(1).amin(1) < 0.05).all() and (view.flatten(1).amax(1) > 0.95).all()
