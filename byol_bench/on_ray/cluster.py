"""Ray at the edge: starting a private local cluster or joining one (quietly, and failing in one line when it
cannot be reached), and sizing a sweep to it: whether its largest trial fits, and how many trials run at once."""

from __future__ import annotations

import os
import socket

from byol_bench.errors import UserError
from byol_bench.on_ray import failpoints
from byol_bench.plan.sweep_file import Sweep

RAY_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0", "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
                "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}


def _check_reachable(address: str) -> None:
    """A TCP look at host:port first: ray.init retries an unreachable address for minutes."""
    if address == "auto":
        return  # Ray finds the local cluster itself, or says at once that there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
        raise UserError(f"cannot reach the Ray cluster at --address {address} ({reason}); check host and port "
                        "(ray://HOST:10001 or HOST:6379), or leave --address out for a local cluster") from None


def quiet_ray(local: bool) -> None:
    """Ray's environment, where the user has not set it: no usage reports, none of the warnings that short
    epochs trigger, and no auth token for a private local cluster (Ray 2.59+ would make one)."""
    for variable, value in RAY_DEFAULTS.items():
        os.environ.setdefault(variable, value)
    if local:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def start_ray(address: str | None, verbose: bool):
    """Ray, started here (a private local cluster) or joined at ``address``; its workers' output reaches
    this console only when ``verbose``."""
    quiet_ray(local=address is None)
    if not verbose:  # Tune's older console prints nothing at verbose 0; its newer one still prints a header
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if address is not None:
        _check_reachable(address)
    import ray

    if ray.is_initialized():  # e.g. a test session's cluster
        return ray, False
    try:
        if address is None:  # "local": a new cluster of our own, never one that another process started here
            ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=verbose)
        else:  # a cluster started elsewhere: its workers lack this process's environment, so faults go along
            ray.init(address=address, logging_level="WARNING", log_to_driver=verbose, runtime_env=failpoints.runtime_env())
    except (ConnectionError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"cannot connect to the Ray cluster at --address {address} ({reason}); "
                        "start it with 'ray start --head' or leave --address out for a local cluster") from None
    return ray, True


def check_resources(ray, sweep: Sweep, workers: int) -> dict:
    """The largest trial (``workers`` workers) must fit the cluster: Ray would leave it pending forever."""
    available = ray.cluster_resources()
    gpus, cpus = sweep.gpus_per_worker * workers, sweep.cpus_per_worker * workers
    if gpus > available.get("GPU", 0):
        raise UserError(f"the sweep asks for {gpus:g} GPU per trial ({workers} worker(s) x {sweep.gpus_per_worker:g}) but "
                        f"the Ray cluster has {available.get('GPU', 0):g}; lower resources.gpu or workers (0 GPUs: CPU), "
                        "or connect to a larger GPU cluster with --address")
    if cpus > available.get("CPU", 0):
        raise UserError(f"the sweep asks for {cpus:g} CPUs per trial ({workers} worker(s) x {sweep.cpus_per_worker:g}) "
                        f"but the Ray cluster has {available.get('CPU', 0):g}; lower resources.cpu or workers")
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if not any(node.get("CPU", 0) >= sweep.cpus_per_worker and node.get("GPU", 0) >= sweep.gpus_per_worker for node in nodes):
        largest = max(nodes, key=lambda node: (node.get("GPU", 0), node.get("CPU", 0)), default={})
        raise UserError(f"no Ray node holds one worker's {sweep.cpus_per_worker:g} CPU and {sweep.gpus_per_worker:g} GPU "
                        f"(the largest has {largest.get('CPU', 0):g} CPU, {largest.get('GPU', 0):g} GPU); lower resources.cpu/gpu")
    return available


def concurrency_limit(sweep: Sweep, workers: int, available: dict, requested: int | None) -> int | None:
    """How many trials may run at once, the largest having ``workers`` workers. DDP trials' drivers hold no
    CPU or GPU, so Tune would start them all and their Train runs would wait for workers: cap them by what
    the cluster holds (Ray's advice)."""
    if workers == 1:
        return requested
    limit = trials_that_fit(sweep, workers, available)
    return min(limit, requested) if limit and requested else limit or requested


def trials_that_fit(sweep: Sweep, workers: int, available: dict) -> int | None:
    """How many trials of ``workers`` workers the cluster's CPUs and GPUs hold at once (None: no bound asked)."""
    fits = [available.get("CPU", 0) / (sweep.cpus_per_worker * workers)] if sweep.cpus_per_worker else []
    fits += [available.get("GPU", 0) / (sweep.gpus_per_worker * workers)] if sweep.gpus_per_worker else []
    return max(1, int(min(fits))) if fits else None
