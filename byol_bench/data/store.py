"""A decoded-image store: a data set's images decoded once, at one stored size, into flat uint8 files that every
trial on the node memory-maps read-only, so the page cache holds one copy for all of them instead of one per trial.

Why a numpy memory map: the trial makes its views on the device from uint8 batches already; a map of decoded uint8
images is the simplest format that feeds it (a batch is an index into the map) and costs no decode per epoch.
litdata and MosaicML's streaming add object-storage streaming, which a shared file system gives a cluster here too.

A store is a folder ``<stores>/<name>-<size>px-<fingerprint>/`` holding each split's images (``<split>.u8``, shape in
``meta.json``) and labels (``<split>-labels.npy``). The fingerprint is the source's (every file's path, size and
modification time): a changed tree is a new store. It is built in a folder of its own and renamed into place once
whole, under a lock, so two trials that start together build it once and a killed build is never read; ``meta.json``
records each file's size, so a store cut short later (a full disk, a damaged copy) is found and built again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

STORE_VERSION = 1
META = "meta.json"
SPLITS = ("train", "test", "pretrain")  # pretrain: only where a data set pretrains on other images (STL-10)


@dataclass
class Split:
    """One split to write: how many images, and a function that yields (first index, uint8 batch) until all are made."""
    count: int
    labels: np.ndarray
    batches: Callable[[], Iterator[tuple[int, np.ndarray]]]


def fingerprint(paths: list[Path], extra: str = "") -> str:
    """A source's fingerprint: each file's path, size and modification time (a touched file changes it)."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def open_store(folder: Path) -> dict[str, tuple[Tensor, Tensor]] | None:
    """Each split's (images, labels) of a whole store, the images memory-mapped read-only; None when the store is
    missing or not whole (never read then)."""
    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("version") != STORE_VERSION:
            return None
        opened = {}
        for split, (shape, size) in meta["splits"].items():
            images = folder / f"{split}.u8"
            if images.stat().st_size != size:
                return None
            labels = torch.from_numpy(np.load(folder / f"{split}-labels.npy"))
            with warnings.catch_warnings():  # read-only on purpose: the trial never writes its images
                warnings.simplefilter("ignore", UserWarning)
                mapped = torch.from_numpy(np.memmap(images, dtype=np.uint8, mode="r", shape=tuple(shape)))
            opened[split] = (mapped, labels)
        return opened
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stored(folder: Path, build: Callable[[], dict[str, Split]], say: Callable[[str], None]):
    """The store at ``folder``, built first (under its lock) when it is missing or not whole."""
    found = open_store(folder)
    if found is not None:
        return found
    created = [parent for parent in (folder.parent, *folder.parent.parents) if not parent.exists()]
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.with_name(f"{folder.name}.lock")
    try:
        with _locked(lock):
            found = open_store(folder)  # another trial built it while this one waited
            if found is None:
                _build(folder, build(), say)
                found = open_store(folder)
    except BaseException:  # a source that cannot be read (a corrupt file): leave nothing behind
        if not folder.exists():
            lock.unlink(missing_ok=True)
            for parent in created:
                with contextlib.suppress(OSError):
                    parent.rmdir()
        raise
    if found is None:
        raise OSError(f"the image store {folder} was built but cannot be read back")
    return found


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the process ends, however it ends
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(folder: Path, splits: dict[str, Split], say: Callable[[str], None]) -> None:
    """Write every split into a folder of its own, then rename it into place whole (replacing one not whole)."""
    building = folder.with_name(f"{folder.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    start, total = time.perf_counter(), sum(split.count for split in splits.values())
    say(f"decoding {total:,} images into the image store {folder} (once for every trial on this node)")
    meta = {"version": STORE_VERSION, "splits": {}}
    try:
        for name, split in splits.items():
            meta["splits"][name] = _write_split(building, name, split)
        (building / META).write_text(json.dumps(meta))
        shutil.rmtree(folder, ignore_errors=True)  # a store found not whole
        os.replace(building, folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    size = sum(bytes_ for _, bytes_ in meta["splits"].values())
    say(f"image store {folder.name}: {total:,} images, {size / 2**30:.2f} GiB, built in "
        f"{time.perf_counter() - start:.0f} s")


def _write_split(folder: Path, name: str, split: Split) -> tuple[list[int], int]:
    np.save(folder / f"{name}-labels.npy", np.asarray(split.labels, dtype=np.int64))
    out = None
    for first, batch in split.batches():
        if out is None:
            shape = (split.count, *batch.shape[1:])
            out = np.memmap(folder / f"{name}.u8", dtype=np.uint8, mode="w+", shape=shape)
        out[first : first + len(batch)] = batch
    if out is None:  # an empty split
        shape = (0,)
        (folder / f"{name}.u8").write_bytes(b"")
    else:
        out.flush()
        del out
    with open(folder / f"{name}.u8", "rb+") as handle:
        os.fsync(handle.fileno())
    return list(shape), (folder / f"{name}.u8").stat().st_size


def in_memory(images: Tensor, labels: Tensor, batch: int = 4096) -> Split:
    """A split from tensors already decoded (a data set read whole from its own files)."""
    array = images.numpy()
    return Split(len(images), labels.numpy(), lambda: ((i, array[i : i + batch]) for i in range(0, len(array), batch)))


STORE_RATIO = 256 / 224  # a tree's images are stored this much larger than the trial's size (its crops' room)


def from_store(name: str, spec, root: Path, size: int, download: bool, stores: Path) -> tuple:
    """A data set's (train images, labels, test images, labels, pretraining images or None) from its store at
    ``size`` px in the folder ``stores``, built first where it is missing, changed or not whole."""
    import sys

    source = spec.source(root, download)
    files = [path for path in source.rglob("*") if path.is_file()]
    folder = stores / f"{name}-{size}px-{fingerprint(files, str(source.resolve()))}"

    def build() -> dict[str, Split]:
        if spec.splits is not None:
            return spec.splits(source, size)
        train_x, train_y, test_x, test_y, pretrain = spec.load(root, size, download)
        splits = {"train": in_memory(train_x, train_y), "test": in_memory(test_x, test_y)}
        if pretrain is not None:
            splits["pretrain"] = in_memory(pretrain, torch.full((len(pretrain),), -1))
        return splits

    splits = stored(folder, build, lambda line: print(f"byol-bench: {line}", file=sys.stderr, flush=True))
    pretrain = splits.get("pretrain")
    return (*splits["train"], *splits["test"], pretrain[0] if pretrain is not None else None)
