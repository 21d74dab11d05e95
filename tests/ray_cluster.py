"""A two-node Ray cluster on this machine, as on two: a head and a second node started with
`ray start` in their own processes, one CPU each, stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

START_SECONDS = 180


@contextlib.contextmanager
def two_node_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """Yields the head's address and the environment a command that joins it needs (its token)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_worker_niceness": "0"}
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--include-dashboard=false", *common], env=env, check=True,
                       capture_output=True, timeout=START_SECONDS)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", *common], env=env, check=True, capture_output=True,
                       timeout=START_SECONDS)
        yield f"127.0.0.1:{port}", env
        status = subprocess.run([ray, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True, text=True,
                                timeout=60)
        assert "2.0 CPU" in status.stdout  # both nodes were there
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
