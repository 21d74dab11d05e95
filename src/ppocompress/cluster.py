"""Connecting to Ray, the one place that knows how: a local cluster started for the run, or
an existing one at an address. Ray is an optional extra (`pip install 'ppocompress[ray]'`).

Settings made explicit rather than left to Ray's defaults, which change between releases:
token authentication is on (RAY_AUTH_MODE=token; a local cluster makes its token in
~/.ray/auth_token, and a remote one needs the same token, from that file or
RAY_AUTH_TOKEN); a local cluster's object store is LOCAL_OBJECT_STORE_BYTES instead of
about 30% of memory (what crosses it here is configs and small results); and workers run
at normal priority (RAY_worker_niceness=0): at Ray's default of 15, any other busy process
on the machine starves the trials. A local cluster's control server may take
GCS_START_SECONDS to come up instead of Ray's 30, which a first start on a cold disk with
busy cores can exceed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator

from ppocompress.errors import UserError

LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2
GCS_START_SECONDS = 120
CONNECT_SECONDS = 5  # for the head's port to answer, checked first: ray.init waits far longer on one that never will
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
    check_address(address)
    try:
        if local:
            os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(GCS_START_SECONDS))  # read by ray.init
            ray.init(num_cpus=num_cpus or os.cpu_count(), object_store_memory=LOCAL_OBJECT_STORE_BYTES, **settings)
        else:
            ray.init(address=address, **settings)
    except (ConnectionError, ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if local:
            raise RuntimeError(f"a local Ray cluster did not start ({reason})") from error
        raise UserError(f"cannot reach a Ray cluster at {address!r} ({reason}); start one with "
                        "`ray start --head`, or leave --ray out to run on a local one") from None
    try:
        yield int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


def check_address(address: str | None) -> None:
    """Ray is installed and the address, if one is given, answers: checked before a run starts."""
    import_ray()
    if address in (None, "local", "auto"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray {address!r} is not host:port or auto; give the head node's address, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise UserError(f"cannot reach a Ray cluster at {address!r} ({error.strerror or error}); start one with "
                        "`ray start --head`, or leave --ray out to run on a local one") from None
