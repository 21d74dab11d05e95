"""Per-update training metrics: a CSV file and a rich progress bar."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ppocompress.terminal import stderr_progress

METRIC_COLUMNS = (
    "update",
    "steps",
    "episode_return_mean",
    "episode_length_mean",
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "grad_norm",
    "explained_variance",
    "kl_coef",
    "learning_rate",
    "clip_range",
    "epochs_run",
    "first_ratio_deviation",
    "steps_per_second",
)


class TrainingLogger:
    """Writes one CSV row per update and moves the progress bar; both are optional."""

    def __init__(self, total_steps: int, csv_path: str | Path | None = None, progress_bar: bool = False):
        self._file: IO[str] | None = None
        self._writer = None
        if csv_path is not None:
            self._file = open(csv_path, "w", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=METRIC_COLUMNS)
            self._writer.writeheader()
        self._progress = None
        if progress_bar:
            self._progress = stderr_progress(
                TextColumn("[bold]PPO"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("return {task.fields[ret]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self._task = self._progress.add_task("train", total=total_steps, ret="-")
            self._progress.start()

    def log(self, metrics: dict[str, float], steps_done: int) -> None:
        if self._writer is not None:
            self._writer.writerow({k: metrics.get(k, "") for k in METRIC_COLUMNS})
            self._file.flush()
        if self._progress is not None:
            ret = metrics.get("episode_return_mean")
            shown = "-" if ret is None or ret != ret else f"{ret:.1f}"
            self._progress.update(self._task, completed=steps_done, ret=shown)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._file is not None:
            self._file.close()
            self._file = None
