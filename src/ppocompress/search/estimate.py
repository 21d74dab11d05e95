"""How long a `compress` run will take, printed at its start.

Each phase's duration was measured on all-MiniLM-L6-v2 on this project's reference
machine (2 cores, OpenVINO serving, 200 evaluations a searcher); a run scales them by how
long its importance scoring took against MiniLM's there, which puts a larger model's
forward passes into the estimate. Latency workers and NNCF scale about the same way."""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_IMPORTANCE_S = 4.0  # importance scores on 256 passages, MiniLM, reference machine
DENSE_TIMING_S = 67.0  # dense PyTorch and each runtime's dense and dense int8, exported and timed
TABLE_S = 129.0  # the latency table, when not cached
SENSITIVITY_S_PER_EVALUATION = 0.62
SEARCH_S_PER_EVALUATION = {"ppo": 0.75, "evolutionary": 0.37, "random": 0.32, "uniform": 0.25}
DELIVERY_FIXED_S = 100.0  # finalists re-scored, dense exports, quality, latency rounds
DELIVERY_PER_PLAN_S = 38.0  # sequential least squares, export, static int8 calibration


@dataclass
class Estimate:
    phases: dict[str, float]  # seconds

    @property
    def total(self) -> float:
        return sum(self.phases.values())

    def line(self) -> str:
        parts = ", ".join(f"{name} {seconds / 60:.1f}" for name, seconds in self.phases.items() if seconds > 0)
        return f"estimated duration: {self.total / 60:.0f} min ({parts} min)"


def estimate(importance_s: float, searchers: list[str], evals: int, levels: int, sensitivity_evaluations: int,
             table_cached: bool, dense_timed: bool, measured: bool) -> Estimate:
    """importance_s: what this run's importance scoring took; the rest says what is left to
    do (the uniform searcher scores at most one plan per menu level)."""
    scale = importance_s / REFERENCE_IMPORTANCE_S
    phases = {
        "dense timing": 0.0 if dense_timed or not measured else DENSE_TIMING_S,
        "latency table": 0.0 if table_cached or not measured else TABLE_S,
        "sensitivities": SENSITIVITY_S_PER_EVALUATION * sensitivity_evaluations,
        "search": sum(SEARCH_S_PER_EVALUATION[name] * (min(evals, levels) if name == "uniform" else evals) for name in searchers),
        "delivery": DELIVERY_FIXED_S + DELIVERY_PER_PLAN_S * len(searchers),
    }
    return Estimate({name: seconds * scale for name, seconds in phases.items()})
