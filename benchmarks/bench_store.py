"""The image store at scale, rerunnable anywhere: an ImageFolder tree of N synthetic JPEGs, then

- the store's build time (images/s per core);
- a trial's data-ready time with a cold store (built) and a warm one (mapped);
- resident memory (PSS: shared pages split between their users) per trial with two trials holding the data at once,
  against a past revision's code (``--baseline REV``, default: the last revision before the store) in the same run;
- the data path's images/s alone (a batch gathered from the map and its two views made) against the training step's;
- from those, the ImageNet-1k figures on paper: store size, build time on 64 cores, and the read bandwidth a GPU at
  a given images/s needs against what this disk delivered reading the store cold.

    .venv/bin/python benchmarks/bench_store.py --images 50000 --size 160 --image-size 128

Every figure is a ratio or a rate measured in this one run, on this machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
IMAGENET_TRAIN = 1_281_167
HOLD = """
import sys, time, os
sys.path.insert(0, {tree!r})
from byol_bench.data.datasets import load_data
kwargs = {kwargs!r}
data = load_data("imagefolder", {folder!r}, image_size={image_size}, **kwargs)
order = __import__("torch").randperm(len(data.pretrain_images))
for start in range(0, len(order), 256):  # an epoch of batches: what a trial touches
    data.pretrain_images[order[start:start + 256]].float().mean()
print("ready", flush=True)
time.sleep(120)  # held until the parent has read both trials' PSS
"""


def make_tree(root: Path, images: int, size: int, classes: int = 100) -> None:
    """``images`` JPEGs of ``size`` x ``size * 5 // 4`` px (landscape, as photos are), noise over a class colour."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(images):
        folder = root / f"class{index % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=3)
        pixels = (base + rng.integers(-40, 40, size=(size, size * 5 // 4, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=90)


def two_trials_pss(tree_code: Path, folder: Path, image_size: int, kwargs: dict) -> list[tuple[int, int]]:
    """(PSS, anonymous memory) in KiB of each of two processes that load the data with the code in ``tree_code``,
    touch all of it, and hold it at once (read while both hold it: shared pages count half to each; anonymous memory
    is the process's own, the page cache's mapped files not in it)."""
    code = HOLD.format(tree=str(tree_code), folder=str(folder), image_size=image_size, kwargs=kwargs)
    env = {**os.environ, "PYTHONPATH": str(tree_code)}
    trials = []
    for _ in range(2):  # one after the other: the second finds the first's store built (or decodes again)
        trials.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env))
        assert trials[-1].stdout.readline().strip() == "ready"
    pss = [_pss(trial.pid) for trial in trials]
    for trial in trials:
        trial.kill()
    return pss


def _pss(pid: int) -> tuple[int, int]:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return tuple(next(int(line.split()[1]) for line in rollup if line.startswith(key)) for key in ("Pss:", "Anonymous:"))


def data_path_rate(data, image_size: int, device: str, batch: int = 256, rounds: int = 5) -> float:
    """Images/s of a batch gathered from the map (pinned and copied to a GPU) and BYOL's two views made on ``device``
    (the CPU: one thread)."""
    import torch

    from byol_bench.models.methods import METHODS
    from byol_bench.trial.views import TensorViews

    torch.set_num_threads(1)
    views = TensorViews(METHODS["byol"].views, image_size, 3, data.mean, data.std, seed=0, device=device)
    order = torch.randperm(len(data.pretrain_images))
    batches = [order[(step % (len(order) // batch)) * batch:][:batch] for step in range(rounds + 1)]
    gather = (lambda idx: data.pretrain_images[idx]) if device == "cpu" else (  # noqa: E731
        lambda idx: data.pretrain_images[idx].pin_memory().to(device, non_blocking=True))
    views(gather(batches[0]))  # warm-up
    _sync(device)
    start = time.perf_counter()
    for idx in batches[1:]:
        views(gather(idx))
    _sync(device)
    return rounds * batch / (time.perf_counter() - start)


def _sync(device: str) -> None:
    import torch

    if device != "cpu":
        torch.cuda.synchronize()


def training_step_rate(image_size: int, device: str, batch: int = 16, rounds: int = 2) -> float:
    """Images/s of BYOL's training step with a ResNet-18 at ``image_size`` on ``device`` (the CPU: one thread)."""
    import torch

    from byol_bench.config import make_config
    from byol_bench.trial.run import build_method

    batch = batch if device == "cpu" else 256
    cfg = make_config({"method": "byol", "backbone": "resnet18", "dataset": "synthetic", "image_size": image_size,
                       "batch_size": batch, "threads": 1, "precision": "fp32" if device == "cpu" else "bf16"})
    method = build_method(cfg, 3, image_size, torch.device(device))
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)
    views = [torch.randn(batch, 3, image_size, image_size, device=device) for _ in range(2)]
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device != "cpu")
    with autocast:
        method(*views).backward()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(rounds if device == "cpu" else 20):
        optimizer.zero_grad()
        with autocast:
            method(*views).backward()
        optimizer.step()
    _sync(device)
    return (rounds if device == "cpu" else 20) * batch / (time.perf_counter() - start)


def _file_system(path: Path) -> str:
    """The file system type of the mount that holds ``path`` (tmpfs is memory, not a disk)."""
    best = ("?", "")
    for line in Path("/proc/mounts").read_text().splitlines() if Path("/proc/mounts").exists() else []:
        _, mount, kind, *_ = line.split()
        if str(path.resolve()).startswith(mount) and len(mount) > len(best[1]):
            best = (kind, mount)
    return best[0]


def cold_read_rate(path: Path) -> float:
    """Bytes/s reading ``path`` after evicting it from the page cache."""
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        start, total = time.perf_counter(), 0
        while chunk := handle.read(64 * 2**20):
            total += len(chunk)
    return total / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=350, help="the JPEGs' short side in px (ImageNet's are about 350-500)")
    parser.add_argument("--image-size", type=int, default=224, help="the trial's image size (stored at x 256/224)")
    parser.add_argument("--device", default="cpu", help="where the data path and the step run: cpu, or cuda")
    parser.add_argument("--scratch", default=None, help="a folder on the disk to measure (default: the system's "
                                                        "temporary folder)")
    parser.add_argument("--baseline", default="c392cfa", help="a revision before the store, for the memory figure")
    parser.add_argument("--gpu-images-per-s", type=float, default=3000, help="a GPU's training rate, for the "
                                                                               "bandwidth it needs")
    args = parser.parse_args()
    from byol_bench.data.datasets import load_data

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        make_tree(scratch / "tree", args.images, args.size)
        print(f"made {args.images:,} JPEGs of {args.size} px in {time.perf_counter() - start:.0f} s", flush=True)
        stores = {"store_dir": str(scratch / "stores")}
        start = time.perf_counter()
        data = load_data("imagefolder", str(scratch / "tree"), image_size=args.image_size, **stores)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        data = load_data("imagefolder", str(scratch / "tree"), image_size=args.image_size, **stores)
        warm = time.perf_counter() - start
        stored = data.train_images.shape[-1]
        per_core = args.images / cold / cpus
        print(f"store: {args.images:,} images at {stored} px built in {cold:.1f} s on {cpus} cores: "
              f"{per_core:.0f} images/s per core; data ready from a warm store in {warm:.2f} s "
              f"({cold / warm:.0f}x sooner than cold)")
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-f", str(scratch / "baseline"), args.baseline],
                       check=True, capture_output=True)
        before = two_trials_pss(scratch / "baseline", scratch / "tree", args.image_size, {})
        after = two_trials_pss(REPO, scratch / "tree", args.image_size, stores)
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(scratch / "baseline")])
        data_mib = data.train_images.numel() / 2**20
        for what, index in (("PSS", 0), ("anonymous (own) memory", 1)):
            old, new = [trial[index] / 2**10 for trial in before], [trial[index] / 2**10 for trial in after]
            print(f"{what} per trial, two trials holding the {data_mib:.0f} MiB of images at once: {old[0]:.0f} and "
                  f"{old[1]:.0f} MiB with {args.baseline}'s code, {new[0]:.0f} and {new[1]:.0f} MiB with the store: "
                  f"{sum(old) / sum(new):.2f}x less")
        path_rate = data_path_rate(data, args.image_size, args.device)
        step_rate = training_step_rate(args.image_size, args.device)
        where = "one CPU thread" if args.device == "cpu" else f"{args.device} (bf16 step, batch 256)"
        print(f"{where}: the data path (gather a batch from the map, make its two views) {path_rate:.0f} images/s; "
              f"BYOL's ResNet-18 step at {args.image_size} px {step_rate:.0f} images/s: the data path is "
              f"{path_rate / step_rate:.1f}x the step")
        read = cold_read_rate(next((scratch / "stores").glob("*/train.u8")))
        imagenet_bytes = IMAGENET_TRAIN * 3 * stored * stored
        need = args.gpu_images_per_s * 3 * stored * stored
        print(f"ImageNet-1k on paper, at {stored} px: a store of {imagenet_bytes / 2**30:.0f} GiB; built in "
              f"{IMAGENET_TRAIN / (per_core * 64) / 60:.0f} min on 64 cores at this per-core rate; a GPU at "
              f"{args.gpu_images_per_s:.0f} images/s reads {need / 2**20:.0f} MiB/s from it; this disk read the "
              f"store cold at {read / 2**20:.0f} MiB/s ({read / need:.2f}x what that GPU needs; file system "
              f"{_file_system(scratch)}). The build rate is this benchmark's JPEGs' ({args.size} px short side).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
