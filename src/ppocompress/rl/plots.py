"""The learning-curve picture written next to a trained agent."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ppocompress.fileio import atomic_path  # noqa: E402


def plot_learning_curve(episodes: list[tuple[int, float, int]], path: str | Path, title: str) -> None:
    """Episode return against environment steps: each episode as a dot, plus a rolling mean."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if episodes:
        steps = np.array([e[0] for e in episodes])
        returns = np.array([e[1] for e in episodes])
        ax.scatter(steps, returns, s=4, alpha=0.25, label="episode return")
        window = max(1, min(50, len(returns) // 10))
        rolling = np.convolve(returns, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], rolling, color="C1", linewidth=2, label=f"mean of last {window}")
        ax.legend(loc="lower right")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
