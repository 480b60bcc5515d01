"""What a trial measures about itself: step times, peak memory, FLOPs per image and the device's peak FLOP/s.

Nothing here changes what is trained; the loop in ``trial/loop.py`` reads these instruments around its steps.
"""

from __future__ import annotations

import functools
import os
import resource
import sys
import time

import torch


@functools.lru_cache(maxsize=None)
def cpu_has_amx_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX-BF16 tiles that oneDNN may use: the one CPU feature that makes bf16 convolutions
    faster than fp32 (AVX2 and AVX-512 alone run them slower). ``ONEDNN_MAX_CPU_ISA`` below AMX (how an AVX2
    machine is emulated) rules them out, as it does for oneDNN."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "DEFAULT").upper()
    if cap != "DEFAULT" and "AMX" not in cap:
        return False
    try:
        with open(cpuinfo) as lines:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in lines)
    except OSError:  # not Linux: no way to tell without a private torch API, so the safe choice
        return False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=None)
def measured_peak_flops(device: torch.device, dtype: torch.dtype, threads: int) -> float:
    """MFU's denominator, measured once per process and thread count."""
    return matrix_product_flops(device, dtype)


def matrix_product_flops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """The device's matrix-product FLOP/s: the best of ``repeats`` timings (noise on shared machines only
    ever slows a timing, so the best is the closest to the device's own)."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    # fp32 convolutions on CUDA run in TF32 by default (cudnn.allow_tf32): the peak must be TF32's too.
    tf32 = device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    previous, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, tf32 or torch.backends.cuda.matmul.allow_tf32
    try:
        a @ b  # warm-up: kernels chosen, caches filled
        synchronize(device)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size**3 / best


class PeakMemory:
    """Peak memory since this object was made: on CUDA the most PyTorch allocated; on the CPU the largest
    resident set seen at a ``sample()`` (the process's own high-water mark would carry an earlier trial's
    peak into a reused Ray worker)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        if self.device.type != "cuda":
            self.peak = max(self.peak, resident_bytes())

    def bytes(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else self.peak


def resident_bytes() -> int:
    try:  # Linux: the current resident set, in pages
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # elsewhere: the process's high-water mark, in bytes on macOS and KiB on the BSDs
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


class StepClock:
    """One epoch's step times, each from the end of the previous step (so waiting for data counts), and
    the part of each spent getting the batch. On CUDA the marks are events on the stream, read when the
    times are asked for: the host never waits for the device between steps, so it queues the next batch
    while the GPU trains. On the CPU they are clock readings."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"
        self.marks = []  # (start, got_batch, done) of every timed step

    def now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))  # the trial's GPU, which need not be the current one
        return event

    def add(self, start, got_batch, done) -> None:
        self.marks.append((start, got_batch, done))

    def times(self) -> tuple[list[float], list[float]]:
        """(step times, data waits) in seconds, of every step added so far; the device has caught up on return."""
        synchronize(self.device)
        elapsed = (lambda a, b: a.elapsed_time(b) / 1000) if self.cuda else (lambda a, b: b - a)
        return [elapsed(s, d) for s, _, d in self.marks], [elapsed(s, g) for s, g, _ in self.marks]


def timed(device: torch.device, work):
    """(``work()``'s result, its wall time in seconds once the device has caught up)."""
    start = time.perf_counter()
    result = work()
    synchronize(device)
    return result, time.perf_counter() - start


def images_per_second(global_batch_size: int, step_times: list[float]) -> float | None:
    return global_batch_size * len(step_times) / sum(step_times) if step_times else None  # ranks step in lockstep
