"""Where a number came from: versions, git revision, hardware, threads, time."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from byol_bench.trial.result import Provenance, typed


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Commit:
    """The git checkout a run came from."""

    revision: str  # the full commit hash
    time: str  # the committer's time, ISO 8601
    branch: str | None  # None on a detached HEAD
    dirty: bool  # uncommitted changes to tracked files


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(revision: str = "HEAD", folder: Path = Path(__file__).resolve().parent) -> Commit | None:
    """A commit of the repository at ``folder`` (by default this package's checkout); the branch and uncommitted
    changes only for the commit checked out there. None outside git or for an unknown revision."""
    facts = _git(folder, "show", "-s", "--format=%H %cI", revision)
    if facts is None:
        return None
    full, time = facts.split()
    if _git(folder, "rev-parse", "HEAD") != full:
        return Commit(full, time, None, False)
    branch = _git(folder, "symbolic-ref", "--short", "-q", "HEAD") or None
    return Commit(full, time, branch, bool(_git(folder, "status", "--porcelain", "--untracked-files=no")))


def git_revision() -> str | None:
    """The checkout's commit, with '-dirty' when it has uncommitted changes; None outside git."""
    commit = git_commit()
    return None if commit is None else commit.revision + ("-dirty" if commit.dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "lightly": _version("lightly"),
        "ray": _version("ray"),
        "byol_bench": _version("byol-bench"),
    }


def plugins_used(method: str, backbone: str) -> dict[str, str]:
    """The trial's method and backbone that are not built in, each with the package (and version) it came from."""
    from byol_bench.models.backbones import backbone_origin
    from byol_bench.models.methods import METHOD_ORIGINS
    from byol_bench.models.plugins import BUILT_IN

    origins = {f"method {method}": METHOD_ORIGINS[method], f"backbone {backbone}": backbone_origin(backbone)}
    return {what: origin for what, origin in origins.items() if origin != BUILT_IN}


def provenance(device: torch.device, seed: int, plugins: dict[str, str]) -> Provenance:
    return typed(Provenance, {
        **versions(),
        "git_revision": git_revision(),
        "device": str(device),
        "device_name": device_name(device),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "seed": seed,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "plugins": plugins,
    })
