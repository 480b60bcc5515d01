"""Data sets: a registry of image sources, held as uint8 tensors, with seeded stratified subsets.

Every data set resolves to the same shape of data, ``ImageData``: uint8 images (N, C, H, W) for
pretraining, a labelled train set (the kNN bank and the linear probe's training data) and a
labelled test set. Views are made from these tensors by ``byol_bench.trial.views``.
"""

from __future__ import annotations

import gzip
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from byol_bench.data.imagefolder import imagefolder_source, imagefolder_splits
from byol_bench.data.store import STORE_RATIO, from_store
from byol_bench.data.subsets import stratified_subset
from byol_bench.errors import UserError, unknown

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "byol-bench" / "data"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class ImageData:
    """A data set ready for a trial: uint8 images (N, C, H, W) and int64 labels."""

    name: str
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    pretrain_images: Tensor
    pretrain_labels: Tensor | None  # None where pretraining uses unlabeled images (STL-10)
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


@dataclass(frozen=True)
class DatasetSpec:
    image_size: int  # native size, or the default size of a data set that is made at any size
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # load(root, image_size, download) -> (train images, train labels, test images, test labels, unlabeled or None)
    load: Callable[[Path, int, bool], tuple]
    description: str
    sizes: tuple[int, int, int] | None = None  # (pretrain, train, test) images; None: known only once loaded
    any_size: bool = False  # decoded (imagefolder) or drawn (synthetic) at the trial's image_size
    unlabeled_pretraining: bool = False  # pretrains on images without labels (STL-10's unlabeled split)
    # Where its files are (found, or downloaded first): a data set with one goes through the image store (data/store.py),
    # decoded once per node; the rest are made in memory (synthetic, digits).
    source: Callable[[Path, bool], Path] | None = None
    splits: Callable[[Path, int], dict] | None = None  # its store's splits, where not simply ``load``'s tensors


def data_root(data_dir: str | None) -> Path:
    """Where data sets live in torchvision's layout: --data-dir, else $BYOL_BENCH_DATA, else a cache folder."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("BYOL_BENCH_DATA"):
        return Path(os.environ["BYOL_BENCH_DATA"]).expanduser()
    return DEFAULT_DATA_ROOT


# --- Fashion-MNIST -------------------------------------------------------------------------------


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): the format of the MNIST family."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_fashion_mnist(root: Path) -> Path | None:
    """The first folder holding all four Fashion-MNIST IDX files, in the documented search order."""
    env = os.environ.get("BYOL_BENCH_DATA")
    places = [root, root / "FashionMNIST" / "raw"]  # --data-dir first, when given (else it is the data root)
    places += [Path(env), Path(env) / "FashionMNIST" / "raw"] if env else []
    places += [DEBIAN_FASHION_MNIST]
    for folder in places:
        if all(_idx_file(folder, stem) for stem in FASHION_MNIST_FILES.values()):
            return folder
    return None


def _load_fashion_mnist(root: Path, image_size: int, download: bool):
    folder = find_fashion_mnist(root)
    if folder is None:
        _torchvision("FashionMNIST", root, download, "install the Debian package dataset-fashion-mnist or set BYOL_BENCH_DATA")
        folder = root / "FashionMNIST" / "raw"
    try:
        arrays = {key: _read_idx(_idx_file(folder, stem)) for key, stem in FASHION_MNIST_FILES.items()}
    except (OSError, EOFError, ValueError, IndexError) as error:  # truncated, not gzip, wrong shape
        raise UserError(f"Fashion-MNIST files in {folder} are unreadable or corrupt ({type(error).__name__}); "
                        "reinstall them (apt-get install --reinstall dataset-fashion-mnist) or point BYOL_BENCH_DATA "
                        "at good copies") from None
    to_images = lambda a: torch.from_numpy(a.copy()).unsqueeze(1)  # noqa: E731 - (N, 28, 28) -> (N, 1, 28, 28)
    to_labels = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return (
        to_images(arrays["train_images"]),
        to_labels(arrays["train_labels"]),
        to_images(arrays["test_images"]),
        to_labels(arrays["test_labels"]),
        None,
    )


# --- torchvision data sets (downloaded on first use where there is internet) ---------------------


def _torchvision(class_name: str, root: Path, download: bool, hint: str, **kwargs):
    """Build a torchvision data set, downloading it into ``root`` when it is missing and ``download``."""
    import torchvision

    try:
        return getattr(torchvision.datasets, class_name)(str(root), download=download, **kwargs)
    except Exception as error:  # no network, a partial download, a read-only root...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        action = "could not be downloaded" if download else "downloads are off"
        raise UserError(f"data set {class_name} is not under {root} and {action} ({reason}); {hint}") from None


TORCHVISION_HINT = "put it under --data-dir in torchvision's layout, or run once with internet access"


def _cifar(class_name: str):
    def load(root: Path, image_size: int, download: bool):
        splits = [_torchvision(class_name, root, download, TORCHVISION_HINT, train=train) for train in (True, False)]
        as_images = lambda ds: torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        as_labels = lambda ds: torch.tensor(ds.targets, dtype=torch.int64)  # noqa: E731
        return as_images(splits[0]), as_labels(splits[0]), as_images(splits[1]), as_labels(splits[1]), None

    return load


def _torchvision_source(class_name: str, folder: str, **split):
    """A torchvision data set's folder under the root, downloaded first where it is missing and ``download``."""
    def source(root: Path, download: bool) -> Path:
        if not (root / folder).is_dir():
            _torchvision(class_name, root, download, TORCHVISION_HINT, **split)
        return root / folder

    return source


def _fashion_mnist_source(root: Path, download: bool) -> Path:
    folder = find_fashion_mnist(root)
    if folder is None:
        _torchvision("FashionMNIST", root, download, "install the Debian package dataset-fashion-mnist or set BYOL_BENCH_DATA")
        folder = root / "FashionMNIST" / "raw"
    return folder


def _load_stl10(root: Path, image_size: int, download: bool):
    train, test, unlabeled = (_torchvision("STL10", root, download, TORCHVISION_HINT, split=s) for s in ("train", "test", "unlabeled"))
    as_labels = lambda ds: torch.from_numpy(ds.labels.astype(np.int64))  # noqa: E731
    images = lambda ds: torch.from_numpy(ds.data)  # noqa: E731 - already (N, 3, 96, 96)
    # Pretraining uses the unlabeled split and the labelled train split, as in the STL-10 protocol.
    pretrain = torch.cat([images(unlabeled), images(train)])
    return images(train), as_labels(train), images(test), as_labels(test), pretrain


# --- synthetic -----------------------------------------------------------------------------------

SYNTHETIC_CLASSES = 10


def make_synthetic(count: int, seed: int, image_size: int = 32) -> tuple[Tensor, Tensor]:
    """Class-structured RGB images for fast tests, NOT a benchmark.

    Each class is a grating with its own orientation, frequency and colour; every image gets its own
    phase, a little orientation jitter and pixel noise, so views of one image differ from another's.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randperm(count, generator=g) % SYNTHETIC_CLASSES
    theta = labels * math.pi / SYNTHETIC_CLASSES + 0.1 * torch.randn(count, generator=g)
    frequency = 1.5 + (labels % 3).float() + 0.3 * torch.rand(count, generator=g)
    phase = 2 * math.pi * torch.rand(count, generator=g)
    palette = torch.rand(SYNTHETIC_CLASSES, 3, generator=torch.Generator().manual_seed(1234)) * 0.8 + 0.2
    axis = torch.linspace(-1, 1, image_size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    along = xx * torch.cos(theta)[:, None, None] + yy * torch.sin(theta)[:, None, None]
    grating = torch.sin(math.pi * frequency[:, None, None] * along + phase[:, None, None])
    images = 0.5 + 0.4 * grating[:, None] * palette[labels][:, :, None, None]
    images = images + 0.05 * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _load_synthetic(root: Path, image_size: int, download: bool):
    train_images, train_labels = make_synthetic(2000, seed=0, image_size=image_size)
    test_images, test_labels = make_synthetic(500, seed=1, image_size=image_size)
    return train_images, train_labels, test_images, test_labels, None


DIGITS_TEST = 500  # of scikit-learn's 1,797 digits, held out as the test split (stratified, seeded)


def _load_digits(root: Path, image_size: int, download: bool):
    """scikit-learn's bundled handwritten digits (no download): 8 px grayscale, 10 classes, split 1,297 / 500."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("the digits data set is scikit-learn's: pip install 'byol-bench[embedding]' (or scikit-learn)") from None
    digits = load_digits()
    images = torch.from_numpy(np.round(digits.images * 255 / 16).astype(np.uint8))[:, None]  # its 0-16 intensities
    labels = torch.from_numpy(digits.target).long()
    test = stratified_subset(labels, DIGITS_TEST, seed=0)
    train = torch.ones(len(labels), dtype=torch.bool)
    train[test] = False
    return images[train], labels[train], images[test], labels[test], None


# --- registry ------------------------------------------------------------------------------------

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(28, 1, (0.2860,), (0.3530,), _load_fashion_mnist, "Fashion-MNIST, 70k 28 px grayscale", (60000, 60000, 10000),
                                 source=_fashion_mnist_source),
    "cifar10": DatasetSpec(32, 3, CIFAR10_MEAN, CIFAR10_STD, _cifar("CIFAR10"), "CIFAR-10, 60k 32 px", (50000, 50000, 10000),
                           source=_torchvision_source("CIFAR10", "cifar-10-batches-py", train=False)),
    "cifar100": DatasetSpec(32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), _cifar("CIFAR100"), "CIFAR-100, 60k 32 px", (50000, 50000, 10000),
                            source=_torchvision_source("CIFAR100", "cifar-100-python", train=False)),
    "stl10": DatasetSpec(96, 3, (0.4408, 0.4279, 0.3867), (0.2682, 0.2610, 0.2686), _load_stl10, "STL-10, 96 px; pretrains on unlabeled+train", (105000, 5000, 8000),
                          unlabeled_pretraining=True, source=_torchvision_source("STL10", "stl10_binary", split="test")),
    "imagefolder": DatasetSpec(64, 3, IMAGENET_MEAN, IMAGENET_STD, None, "any root/<class>/<image> tree (--data-dir)", any_size=True,
                               source=imagefolder_source, splits=imagefolder_splits),
    "digits": DatasetSpec(8, 1, (0.306,), (0.376,), _load_digits, "scikit-learn's 1,797 8 px handwritten digits, for "
                          "transfer evaluation", (1297, 1297, DIGITS_TEST)),
    "synthetic": DatasetSpec(32, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), _load_synthetic, "generated gratings for tests; not a benchmark", (2000, 2000, 500),
                             any_size=True),
}


def split_validation(images: Tensor, labels: Tensor, fraction: float,
                     seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, labels, validation images, labels): a seeded, stratified ``fraction`` held out."""
    count = round(fraction * len(labels))
    if not 0 < count < len(labels):
        raise UserError(f"validation {fraction} of {len(labels)} train images holds out {count}; give a fraction that "
                        "leaves images on both sides")
    held_out = torch.zeros(len(labels), dtype=torch.bool)
    held_out[stratified_subset(labels, count, seed)] = True
    return images[~held_out], labels[~held_out], images[held_out], labels[held_out]


# --- transfer evaluation -------------------------------------------------------------------------

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601's weights, PIL's convert("L")


def transfer_name(item: str) -> str:
    """An eval_datasets item's name in metric columns: the data set's, or the folder's, in lower case and '_'."""
    name = item if item in DATASETS else Path(item).expanduser().name
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def conform(images: Tensor, channels: int, size: int) -> Tensor:
    """uint8 images with ``channels`` channels (RGB to grayscale by luminance, grayscale repeated to RGB) and
    ``size`` px sides (bilinear, antialiased), as a backbone trained on such images expects them."""
    chunks = []
    for chunk in images.split(4096):  # in float, a whole data set at once would take gigabytes
        x = chunk.float()
        if x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor(LUMINANCE).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        elif x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        chunks.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(chunks)


def load_transfer(item: str, like: ImageData, data_dir: str | None, subset: int | None, test_subset: int | None,
                  seed: int) -> tuple[ImageData, str]:
    """An eval_datasets item (a registered data set under the data root, or an imagefolder tree's path) as ``like``'s
    backbone sees images: ``like``'s channels, size and normalisation; at most ``subset`` train and ``test_subset``
    test images (seeded, stratified). Returns it and a line saying what was converted."""
    if item in DATASETS:
        loaded = load_data(item, data_dir, seed=seed)
    else:  # decoded straight at the pretraining size
        loaded = load_data("imagefolder", item, image_size=like.image_size, seed=seed)
    train_count, test_count = len(loaded.train_labels), len(loaded.test_labels)
    train = stratified_subset(loaded.train_labels, min(subset or train_count, train_count), seed)
    test = stratified_subset(loaded.test_labels, min(test_subset or test_count, test_count), seed)
    train_images = conform(loaded.train_images[train], like.channels, like.image_size)
    converted = ImageData(
        name=transfer_name(item), image_size=like.image_size, channels=like.channels, mean=like.mean, std=like.std,
        num_classes=loaded.num_classes, pretrain_images=train_images, pretrain_labels=loaded.train_labels[train],
        train_images=train_images, train_labels=loaded.train_labels[train],
        test_images=conform(loaded.test_images[test], like.channels, like.image_size),
        test_labels=loaded.test_labels[test])
    description = (f"{converted.name} ({loaded.channels}→{like.channels} channels, "
                   f"{loaded.image_size}→{like.image_size} px, {len(train)} train / {len(test)} test images)")
    return converted, description


def load_data(name: str, data_dir: str | None = None, subset: int | None = None,
              test_subset: int | None = None, image_size: int | None = None, seed: int = 0,
              download: bool = True, validation: float | None = None, store_dir: str | None = None,
              store_size: int | None = None) -> ImageData:
    """Load a registered data set (downloading it if missing and ``download``), then take the seeded subsets.
    With ``validation``, that fraction of the (subset of the) train split is held out and takes the test
    split's place, which is dropped unread (``split_validation``)."""
    if name not in DATASETS:
        raise unknown("data set", name, DATASETS)
    spec = DATASETS[name]
    size = image_size or spec.image_size
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise UserError(f"--data-dir {data_dir} does not exist; give an existing folder or leave it out")
    if spec.source is not None:  # decoded once into the node's image store, memory-mapped by every trial
        stored_size = store_size or (math.ceil(size * STORE_RATIO) if spec.any_size else size)
        stores = Path(store_dir).expanduser() if store_dir else data_root(None) / "stores"
        train_x, train_y, test_x, test_y, unlabeled = from_store(name, spec, data_root(data_dir), stored_size,
                                                                 download, stores)
    else:
        train_x, train_y, test_x, test_y, unlabeled = spec.load(data_root(data_dir), size, download)
    if len(train_y) == 0 or len(test_y) == 0:
        raise UserError(f"data set {name} has no images in its train or test split; check --data-dir")
    for label, requested, available in (("--subset", subset, len(train_y)), ("--test-subset", test_subset, len(test_y))):
        if requested is not None and requested > available:
            raise UserError(f"{label} {requested} is larger than {name}'s {available} images; give at most {available}")
    if subset is not None:
        keep = stratified_subset(train_y, subset, seed)
        train_x, train_y = train_x[keep], train_y[keep]
        if unlabeled is not None:
            unlabeled = unlabeled[torch.randperm(len(unlabeled), generator=torch.Generator().manual_seed(seed))[:subset]]
    if validation is not None:
        train_x, train_y, test_x, test_y = split_validation(train_x, train_y, validation, seed)
    elif test_subset is not None:
        keep = stratified_subset(test_y, test_subset, seed)
        test_x, test_y = test_x[keep], test_y[keep]
    return ImageData(
        name=name, image_size=size if spec.any_size else train_x.shape[-1], channels=train_x.shape[1], mean=spec.mean,
        std=spec.std,
        num_classes=int(max(train_y.max(), test_y.max())) + 1,
        pretrain_images=train_x if unlabeled is None else unlabeled,
        pretrain_labels=train_y if unlabeled is None else None,
        train_images=train_x, train_labels=train_y, test_images=test_x, test_labels=test_y,
    )
