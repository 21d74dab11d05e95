"""Progress bars, on stderr with the log lines: stdout carries only results, so that
`ppocompress compress > summary.txt` holds the summary and nothing else."""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress, ProgressColumn


def stderr_progress(*columns: str | ProgressColumn, **options) -> Progress:
    return Progress(*columns, console=Console(stderr=True), **options)
