"""Who scores a batch of plans: this machine's PlanEvaluator, one plan after another, or
Ray actors in parallel (`compress --ray`), each holding its own evaluator (the dense
model and its database of compressed layers), built once per actor.

A batch's qualities come back in the order of its plans, whichever worker finishes
first, and a plan's quality does not depend on the worker that scored it (each builds
the same evaluator from the same EvaluatorSpec; the thread count does not change a
score), so a run with the same seed makes the same plans with or without Ray. Only
plan evaluations run on the workers: latency is measured on the machine that runs the
command, the one that will serve the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ppocompress.cluster import connect, import_ray
from ppocompress.compress import LoadedModel, load_model
from ppocompress.compress.ops.importance import LayerImportance
from ppocompress.errors import UserError
from ppocompress.search.evaluator import PlanEvaluator
from ppocompress.search.levels import Level
from ppocompress.search.plan import Plan


class Scorer(Protocol):
    def qualities(self, plans: list[Plan], fidelity: str = "low") -> Iterable[float]:
        """Each plan's fidelity to the dense model, in the order of `plans`."""


@dataclass
class EvaluatorSpec:
    """What builds a PlanEvaluator anywhere: here from the loaded model, on a worker from
    the model's source (a path every node can read, a hub id, or None for the embedded one)."""

    model: str | None
    trust_remote_code: bool
    menu: list[Level]
    scores: list[LayerImportance]
    calibration: list[str]
    recovery: str
    recovery_texts: list[str]
    runtime: str

    def build(self, dense: LoadedModel | None = None) -> PlanEvaluator:
        dense = dense or load_model(self.model, trust_remote_code=self.trust_remote_code)
        return PlanEvaluator(dense, self.menu, self.scores, self.calibration, recovery=self.recovery,
                             recovery_texts=self.recovery_texts, runtime=self.runtime)


class _Worker:
    """A Ray actor's state: one evaluator."""

    def __init__(self, spec: EvaluatorSpec):
        self.evaluator = spec.build()

    def identity(self) -> str:
        return self.evaluator.identity

    def quality(self, plan: Plan, fidelity: str) -> float:
        return self.evaluator.quality(plan, fidelity)


class RayScorer:
    """Plans scored on `workers` Ray actors of one CPU each, inside ray_workers (which
    ends them with the connection)."""

    def __init__(self, spec: EvaluatorSpec, workers: int, identity: str):
        """identity: this machine's evaluator's; a worker whose evaluator differs (another
        model at the same path, another package version) is refused."""
        ray = import_ray()  # Ray is optional: imported only here (the error says how to install it)
        from ray.util import ActorPool

        actor = ray.remote(num_cpus=1)(_Worker)
        actors = [actor.remote(spec) for _ in range(workers)]
        found = set(ray.get([a.identity.remote() for a in actors]))
        if found != {identity}:
            raise UserError("a Ray worker scores plans differently from this machine (another model or package version "
                            "on its node?); give every node the same model files and ppocompress")
        self.pool = ActorPool(actors)

    def qualities(self, plans: list[Plan], fidelity: str = "low") -> Iterator[float]:
        return self.pool.map(lambda actor, plan: actor.quality.remote(plan, fidelity), plans)


@contextlib.contextmanager
def ray_workers(address: str | None) -> Iterator[int | None]:
    """The number of Ray workers for plan evaluations (a CPU each) for the block: on a local
    cluster of this machine's CPUs ("local"), or the cluster at `address` ("auto",
    host:port); None without Ray (address None)."""
    if address is None:
        yield None
        return
    with connect(address) as cpus:
        yield cpus
