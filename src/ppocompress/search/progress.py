"""The search's progress bars: a count done out of a total, with the time elapsed."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ppocompress.terminal import stderr_progress


def count_bar(label: str, detail: str) -> Progress:
    """A bar named `label`; `detail` after the count: text, or a template of the task's fields."""
    return stderr_progress(TextColumn(f"[bold]{label:>12}"), BarColumn(), MofNCompleteColumn(), TextColumn(detail),
                           TimeElapsedColumn())
