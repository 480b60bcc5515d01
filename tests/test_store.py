"""The decoded-image store: built once per data set and stored size, memory-mapped by every trial, rebuilt when its
source changes or it is not whole, and the same numbers from a cold or a warm store."""

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byol_bench.config import make_config
from byol_bench.data.datasets import load_data
from byol_bench.trial.run import run_trial

CLASSES, PER_CLASS = 3, 24


@pytest.fixture
def tree(tmp_path) -> Path:
    """A small ImageFolder tree of JPEGs that are not square (48 x 40), a pattern per class."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for label in range(CLASSES):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(PER_CLASS):
            pixels = rng.integers(0, 60, size=(40, 48, 3)) + np.array([200, 80, 0])[np.roll(np.arange(3), label)]
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / f"class{label}" / f"{index}.jpg")
    return root


def _load(tree: Path, stores: Path, **knobs):
    return load_data("imagefolder", str(tree), image_size=32, store_dir=str(stores), **knobs)


def _built(capsys) -> int:
    return capsys.readouterr().err.count("decoding ")


def test_a_tree_is_stored_once_larger_than_its_crops_and_memory_mapped(tree, tmp_path, capsys):
    stores = tmp_path / "stores"
    data = _load(tree, stores)
    [store] = [path for path in stores.iterdir() if path.is_dir()]
    assert _built(capsys) == 1 and store.name.startswith("imagefolder-37px-")  # 32 px x 256/224, rounded up
    assert data.image_size == 32 and data.train_images.shape[1:] == (3, 37, 37)
    assert len(data.train_images) + len(data.test_images) == CLASSES * PER_CLASS
    meta = json.loads((store / "meta.json").read_text())
    assert meta["splits"]["train"][0] == list(data.train_images.shape)
    again = _load(tree, stores)
    assert _built(capsys) == 0 and torch.equal(again.train_images, data.train_images)
    assert _mapped_file(again.train_images) == store / "train.u8"  # the page cache's pages, no copy per trial


def _mapped_file(images: torch.Tensor) -> Path | None:
    """The file whose memory map holds ``images``' data, from /proc/self/maps."""
    address = images.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split()
        low, high = (int(part, 16) for part in span.split("-"))
        if low <= address < high:
            return Path(rest[4]) if len(rest) > 4 else None
    return None


def test_a_changed_tree_is_stored_anew(tree, tmp_path, capsys):
    stores = tmp_path / "stores"
    _load(tree, stores)
    assert _built(capsys) == 1
    image = tree / "class0" / "0.jpg"
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched
    _load(tree, stores)
    assert _built(capsys) == 1
    (tree / "class1" / "5.jpg").unlink()  # removed
    smaller = _load(tree, stores)
    assert _built(capsys) == 1 and len(smaller.train_images) + len(smaller.test_images) == CLASSES * PER_CLASS - 1
    assert len([path for path in stores.iterdir() if path.is_dir()]) == 3


def test_a_store_cut_short_is_built_again_never_read(tree, tmp_path, capsys):
    stores = tmp_path / "stores"
    whole = _load(tree, stores).train_images.clone()
    [store] = [path for path in stores.iterdir() if path.is_dir()]
    images = store / "train.u8"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])  # a full disk, a damaged copy
    assert _built(capsys) == 1
    rebuilt = _load(tree, stores)
    assert _built(capsys) == 1 and torch.equal(rebuilt.train_images, whole)
    (store / "meta.json").unlink()  # a build killed before its last file: the same
    _load(tree, stores)
    assert _built(capsys) == 1


def _load_in_a_process(tree: str, stores: str, start: float) -> None:
    time.sleep(max(0.0, start - time.time()))  # both at once
    load_data("imagefolder", tree, image_size=32, store_dir=stores)


def test_two_trials_that_start_together_build_one_store(tree, tmp_path, capfd):
    stores, start = tmp_path / "stores", time.time() + 1.0
    context = multiprocessing.get_context("spawn")
    loaders = [context.Process(target=_load_in_a_process, args=(str(tree), str(stores), start)) for _ in range(2)]
    for loader in loaders:
        loader.start()
    for loader in loaders:
        loader.join(timeout=120)
    assert [loader.exitcode for loader in loaders] == [0, 0]
    assert capfd.readouterr().err.count("decoding ") == 1
    assert len([path for path in stores.iterdir() if path.is_dir()]) == 1
    assert not list(stores.glob("*.building-*"))


def test_a_trial_gives_the_same_numbers_from_a_cold_and_a_warm_store(tree, tmp_path):
    cfg = make_config(dict(method="simclr", dataset="imagefolder", data_dir=str(tree), image_size=32, batch_size=16,
                           epochs=1, probe_epochs=3, hidden_dim=64, projection_dim=32, knn_k=10, threads=1,
                           store_dir=str(tmp_path / "stores"), save_weights=False, timing_warmup_steps=0))
    cold, warm = (run_trial(cfg, log=lambda line: None) for _ in range(2))
    assert cold.history[0]["loss"] == warm.history[0]["loss"]
    for metric in ("knn_top1", "linear_top1", "effective_rank"):
        assert getattr(cold.metrics, metric) == getattr(warm.metrics, metric)
    assert cold.floors == warm.floors
