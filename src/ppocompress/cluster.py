"""Connecting to Ray, the one place that knows how: a local cluster started for the run, or
an existing one at an address. Ray is an optional extra (`pip install 'ppocompress[ray]'`).

Settings made explicit rather than left to Ray's defaults, which change between releases:
token authentication is on (RAY_AUTH_MODE=token; a local cluster makes its token in
~/.ray/auth_token, and a remote one needs the same token, from that file or
RAY_AUTH_TOKEN); a local cluster's object store is LOCAL_OBJECT_STORE_BYTES instead of
about 30% of memory (what crosses it here is configs and small results); and workers run
at normal priority (RAY_worker_niceness=0): Ray's default of 15 made a CartPole trial 17x
slower (111 s against 6.5 s) while another job kept both cores busy.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from ppocompress.errors import UserError

LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2
INSTALL_HINT = "pip install 'ppocompress[ray]'"


def import_ray():
    """Ray, with the settings above: Ray reads them from the environment when imported."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        import ray
    except ImportError:
        raise UserError(f"Ray is not installed; {INSTALL_HINT}, or run without Ray") from None
    return ray


@contextlib.contextmanager
def connect(address: str | None, num_cpus: int | None = None) -> Iterator[int]:
    """Yields the number of CPUs the cluster has. address None (or "local") starts a local
    cluster of `num_cpus` CPUs (default: this machine's) for the block and stops it after;
    "auto" or host:port joins a running one, which outlives the block."""
    ray = import_ray()
    local = address in (None, "local")
    settings = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if local:
            ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES, **settings)
        else:
            ray.init(address=address, **settings)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise UserError(f"cannot reach a Ray cluster at {address!r} ({str(error).splitlines()[0]}); start one with "
                        "`ray start --head`, or leave the address out to run on a local one") from None
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()
