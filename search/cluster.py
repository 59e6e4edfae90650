"""Joining Ray: a local one, or a cluster at an address that is checked first, and the cluster's shape."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from search.config import SearchError
from search.environment import for_trials
from vae.config import ConfigError


def probe(address: str) -> None:
    """Refuse at once an address where nothing listens (ray.init would wait for minutes)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise SearchError("address", f"expected auto, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise SearchError("address", f"no Ray cluster answers at {address} ({e.strerror or e})") from None


def ray_init(address: str | None, log: Callable[[str], None], verbose: bool = False) -> dict[str, Any]:
    """Start or join Ray; the cluster's shape (nodes, CPUs, GPUs) for the parent run."""
    import ray

    if address is not None:
        probe(address)

    if not verbose:  # a trial that never reported (stopped before its first epoch) is not worth a warning here
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    # Credentials for an MLflow server with auth reach trials through their environment, never as params;
    # so do the driver's settings that trials read (search.environment).
    forwarded = for_trials()
    log(f"joining Ray at {address}" if address else "starting a Ray of this search's own (some seconds)")
    try:
        ray.init(
            # "local": a Ray of its own. None would join the last `ray start` cluster on this machine
            # (or RAY_ADDRESS), and wait forever on one that died without `ray stop`; joining is --address's job.
            address=address or "local",
            include_dashboard=False,
            log_to_driver=verbose,
            configure_logging=False,
            runtime_env={"env_vars": forwarded} if forwarded else None,
        )
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise SearchError("address", f"cannot join a Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n["Resources"].get("CPU", 0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    log(f"ray: {len(nodes)} node(s), {cpus:g} CPUs, {gpus:g} GPUs{' at ' + address if address else ' (local)'}")
    return {"cluster_nodes": len(nodes), "cluster_cpus": cpus, "cluster_gpus": gpus}


def check_config_for_cluster(address: str | None, tracking_uri: str | None) -> None:
    if address and not tracking_uri:
        raise ConfigError(
            "tracking_uri", "required with `address`: give a tracking server every node can reach (http://HOST:PORT)"
        )
