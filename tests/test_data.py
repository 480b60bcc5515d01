import pytest
import torch

from byol_bench.data.datasets import DATASETS, find_fashion_mnist, data_root, load_data, make_synthetic, stratified_subset
from byol_bench.errors import UserError


def test_stratified_subset_keeps_class_shares_and_is_seeded():
    labels = torch.cat([torch.full((600,), 0), torch.full((300,), 1), torch.full((100,), 2)])
    keep = stratified_subset(labels, 100, seed=0)
    assert len(keep) == len(set(keep.tolist())) == 100
    assert torch.bincount(labels[keep]).tolist() == [60, 30, 10]
    assert torch.equal(keep, stratified_subset(labels, 100, seed=0))
    assert not torch.equal(keep, stratified_subset(labels, 100, seed=1))


def test_synthetic_is_class_structured_and_deterministic():
    images, labels = make_synthetic(200, seed=0)
    assert images.shape == (200, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [20] * 10
    again, _ = make_synthetic(200, seed=0)
    assert torch.equal(images, again)


def test_load_data_applies_subsets():
    data = load_data("synthetic", subset=300, test_subset=50, seed=0)
    assert len(data.pretrain_images) == len(data.train_images) == 300 and len(data.test_images) == 50
    assert data.channels == 3 and data.image_size == 32 and data.num_classes == 10


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="mnist-fashion"), "unknown data set"),
    (dict(name="synthetic", subset=10**6), "--subset"),
    (dict(name="synthetic", data_dir="/nonexistent/folder"), "--data-dir"),
])
def test_bad_data_requests_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        load_data(**kwargs)


def test_offline_load_of_a_missing_data_set_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="CIFAR10 is not under"):
        load_data("cifar10", data_dir=str(tmp_path), download=False)


def test_imagefolder_tree_is_decoded_and_split(tmp_path):
    from torchvision.transforms.functional import to_pil_image

    for label in ("cats", "dogs"):
        (tmp_path / label).mkdir()
        for i in range(10):
            to_pil_image(torch.randint(0, 255, (3, 40, 50), dtype=torch.uint8)).save(tmp_path / label / f"{i}.png")
    data = load_data("imagefolder", data_dir=str(tmp_path), image_size=24, store_dir=str(tmp_path.parent / "stores"))
    # stored at 24 x 256/224 px, rounded up: random-resized crops of 24 px draw from more than the 24 px centre
    assert data.image_size == 24 and data.train_images.shape == (16, 3, 28, 28) and data.test_images.shape == (4, 3, 28, 28)
    assert torch.bincount(data.test_labels).tolist() == [2, 2]


@pytest.mark.skipif(find_fashion_mnist(data_root(None)) is None, reason="Fashion-MNIST is not installed (make data)")
def test_real_fashion_mnist_is_read_from_its_idx_files():
    data = load_data("fashion-mnist", download=False)
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert 0.25 < data.train_images.float().mean().item() / 255 < 0.32  # the registered mean is 0.286
    assert DATASETS["fashion-mnist"].mean == (0.2860,)
