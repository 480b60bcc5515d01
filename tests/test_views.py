import pytest
import torch

from byol_bench.methods import METHODS
from byol_bench.views import Draws, PILViewDataset, TensorViews, ViewRecipe, adapt, augment


def _images(n, channels, size, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def _draws(n, seed=0):
    return Draws(torch.Generator().manual_seed(seed), n, slice(0, n))


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (3, 64)])
@pytest.mark.parametrize("method", sorted(METHODS))
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


@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_a_batch_split_across_ranks_gets_the_views_of_one_worker(method):
    recipes = METHODS[method].views
    images = _images(16, 3, 40)
    whole = TensorViews(recipes, 40, 3, (0.5,) * 3, (0.25,) * 3, seed=3, device="cpu")(images)
    shares = [TensorViews(recipes, 40, 3, (0.5,) * 3, (0.25,) * 3, seed=3, device="cpu", rank=rank, world_size=4)(
        images[rank * 4 : (rank + 1) * 4]) for rank in range(4)]
    for view in range(2):
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

    from byol_bench.views import _shift_hue

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


@pytest.mark.parametrize("method", sorted(METHODS))
def test_tensor_views_match_lightlys_pil_views_in_distribution(method):
    """Same recipe, two implementations: pixel mean and std, per-image contrast and colourfulness agree
    (dropping the colour jitter moves the std by ~0.3, always-grayscale the colourfulness by ~0.17)."""
    from byol_bench.data import make_synthetic

    import random

    import numpy as np

    images, _ = make_synthetic(800, seed=0)
    recipes = METHODS[method].views
    mean, std = (0.5,) * 3, (0.25,) * 3
    tensor_views = TensorViews(recipes, 32, 3, mean, std, seed=0, device="cpu")(images)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # lightly's transforms draw from all three
    pil = PILViewDataset(images, recipes, 32, 3, mean, std)
    pil_pairs = [pil[i] for i in range(len(images))]
    for index, tensor_view in enumerate(tensor_views):
        pil_view = torch.stack([pair[index] for pair in pil_pairs])
        assert abs(tensor_view.mean() - pil_view.mean()) < 0.06
        assert abs(tensor_view.std() - pil_view.std()) < 0.08
        contrast = lambda v: v.flatten(1).std(1).mean()  # noqa: E731 - the average within-image spread
        colourfulness = lambda v: v.std(dim=1).mean()  # noqa: E731 - spread across channels: 0 for gray
        assert abs(contrast(tensor_view) - contrast(pil_view)) < 0.08
        assert abs(colourfulness(tensor_view) - colourfulness(pil_view)) < 0.04
