"""How long a `compress` run will take, printed at its start.

Each phase's duration was measured once on a reference machine, for an encoder
(all-MiniLM-L6-v2) and a decoder (SmolLM2-135M); a run scales the reference of its kind by
how long its importance scoring took against the reference's, which puts a larger model's
forward passes (and the machine's speed) into the estimate. Latency workers and NNCF scale
about the same way."""

from __future__ import annotations

from dataclasses import dataclass

from ppocompress.search.searchers import get_searcher


@dataclass(frozen=True)
class Reference:
    """Phase durations of one default run on the reference machine."""

    importance_s: float  # importance scores on 256 passages
    dense_timing_s: float  # dense PyTorch and each runtime's dense and dense int8, exported and timed
    table_s: float  # the latency table, when not cached
    sensitivity_s_per_evaluation: float
    search_s_per_evaluation: dict[str, float]
    delivery_fixed_s: float  # finalists re-scored, dense exports, quality, latency rounds
    delivery_per_plan_s: float  # least squares, export (and static int8 calibration)


# all-MiniLM-L6-v2, the default run (a floor over four targets, 200 evaluations a
# searcher) on a 2-core AMD EPYC with AVX2, ONNX Runtime serving; its delivery judges
# retrieval over the held-out corpus. The estimate searcher's one evaluation costs a
# sensitivity's (its local search on 6 layers takes 0.06 s).
ENCODER = Reference(6.5, 110.0, 120.0, 0.34,
                    {"ppo": 0.60, "evolutionary": 0.13, "random": 0.30, "uniform": 0.17, "estimate": 0.34}, 120.0, 80.0)
# SmolLM2-135M, OpenVINO GenAI serving (decode timing), 100 evaluations a searcher, a
# 2-core Xeon with nothing else running (the latency table from an earlier run). A plan's
# delivery is mostly its data-aware int4 export; the search's evaluations rebuild int4
# layers (fitted as NNCF fits them) that the layer database forgot.
DECODER = Reference(40.0, 140.0, 712.0, 0.29,
                    {"ppo": 2.5, "evolutionary": 0.51, "random": 2.66, "uniform": 3.3, "estimate": 24.0}, 600.0, 75.0)


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
             table_cached: bool, dense_timed: bool, measured: bool, causal: bool = False,
             distill_minutes: float = 0.0, targets: int = 1, floor: bool = False,
             floor_distill_minutes: float = 0.0) -> Estimate:
    """importance_s: what this run's importance scoring took; the rest says what is left to
    do: evals per searcher in all (the uniform searcher scores at most one plan per menu
    level and target), a delivery per target, or with a quality floor a probe per target
    at most (one plan recovered and judged) and one delivery. distill_minutes: each
    recovered plan's distillation time, which is time, not work, so it is not scaled;
    floor_distill_minutes: those of a floor's distillations where least squares fell short
    (settings.floor_distillation), at most."""
    probes, deliveries = (targets, 1) if floor else (0, targets)
    reference = DECODER if causal else ENCODER
    scale = importance_s / reference.importance_s
    phases = {
        "dense timing": 0.0 if dense_timed or not measured else reference.dense_timing_s,
        "latency table": 0.0 if table_cached or not measured else reference.table_s,
        "sensitivities": reference.sensitivity_s_per_evaluation * sensitivity_evaluations,
        "search": sum(reference.search_s_per_evaluation[name] * _evaluations(name, evals, levels, targets) for name in searchers),
        "floor": probes * reference.delivery_per_plan_s,
        "delivery": deliveries * (reference.delivery_fixed_s + reference.delivery_per_plan_s * len(searchers)),
    }
    phases = {name: seconds * scale for name, seconds in phases.items()}
    phases["distillation"] = 60.0 * (distill_minutes * (probes + len(searchers) * deliveries) + floor_distill_minutes)
    return Estimate(phases)


def _evaluations(searcher: str, evals: int, levels: int, targets: int) -> int:
    """The evaluations a searcher will make in all, of `evals` allowed."""
    most = get_searcher(searcher).most_per_target
    return evals if most is None else targets * min(evals // targets, most(levels))
