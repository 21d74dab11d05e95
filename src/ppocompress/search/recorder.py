"""What a searcher's run works with (SearchRun) and what it records: every plan it had
evaluated (Evaluation), in order, and its result (SearchResult). One Recorder stands
between every searcher and the scorer: it counts evaluations up to the searcher's maximum
(repeats are free) and keeps the best plan and the history for the report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ppocompress.errors import UserError
from ppocompress.search.env import CompressionEnv
from ppocompress.search.plan import Plan
from ppocompress.search.reward import PlansScorer


class EvaluationsSpent(Exception):
    """Raised by the Recorder when a searcher has made all the evaluations it may make."""


@dataclass(frozen=True)
class Evaluation:
    plan: Plan
    reward: float
    predicted_speedup: float  # by the cost table

    def to_json(self) -> list:
        return [self.plan.to_json(), self.reward, self.predicted_speedup]

    @classmethod
    def from_json(cls, data) -> "Evaluation":
        """ValueError unless `data` is a to_json()."""
        if not isinstance(data, list) or len(data) != 3:
            raise ValueError(f"an evaluation is [plan, reward, predicted speedup], not {data!r}")
        plan, reward, speedup = data
        return cls(Plan.from_json(plan), float(reward), float(speedup))


@dataclass
class SearchResult:
    searcher: str
    best_plan: Plan
    best_reward: float
    evaluations: int
    curve: list[tuple[int, float]]  # (evaluations so far, best reward so far)
    evaluated: list[Evaluation] = field(default_factory=list)
    # A policy searcher's agent whose plans won (not saved with the result)
    policy: object | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"searcher": self.searcher, "best_plan": self.best_plan.to_json(), "best_reward": self.best_reward,
                "evaluations": self.evaluations, "curve": [list(point) for point in self.curve],
                "evaluated": [e.to_json() for e in self.evaluated]}

    @classmethod
    def from_dict(cls, data: dict) -> "SearchResult":
        return cls(data["searcher"], Plan.from_json(data["best_plan"]), data["best_reward"], data["evaluations"],
                   [tuple(point) for point in data["curve"]], [Evaluation.from_json(e) for e in data["evaluated"]])

    def meeting(self, valid: Callable[[Plan], bool], known: list[Evaluation] = ()) -> "SearchResult":
        """The same run seen by one target of a target set: only the plans that meet it count
        (best, curve, finalists); evaluations stay the run's. `known`: plans scored before
        the run, at no cost to it, that count too."""
        own = {e.plan for e in self.evaluated}
        carried = [e for e in known if valid(e.plan)]
        evaluated = [e for e in carried if e.plan not in own] + [e for e in self.evaluated if valid(e.plan)]
        if not evaluated:
            raise UserError(f"searcher {self.searcher} scored no plan meeting one of the targets; give it a larger --evals")
        best = max(evaluated, key=lambda e: e.reward)
        curve, best_reward = [], max((e.reward for e in carried), default=float("-inf"))
        for count, e in enumerate(self.evaluated, start=1):
            if valid(e.plan) and e.reward > best_reward:
                best_reward = e.reward
            if best_reward > float("-inf"):
                curve.append((count, best_reward))
        return SearchResult(self.searcher, best.plan, best.reward, self.evaluations, curve, evaluated, self.policy)


class Recorder:
    """Wraps score_plans(plans) -> rewards: counts, caches, and remembers the best. Plans
    are recorded in the order given, as their rewards arrive, whatever scores them."""

    def __init__(self, score_plans: PlansScorer, max_evaluations: int, speedup: Callable[[Plan], float],
                 on_evaluation: Callable[["Recorder"], None] | None = None):
        self.score_plans, self.max_evaluations, self.speedup = score_plans, max_evaluations, speedup
        self.on_evaluation = on_evaluation
        self.cache: dict[Plan, float] = {}
        self.best_plan: Plan | None = None
        self.best_reward = float("-inf")
        self.curve: list[tuple[int, float]] = []
        self.evaluated: list[Evaluation] = []

    def __call__(self, plans: list[Plan]) -> list[float]:
        """The plans' rewards; the new ones scored while evaluations are left, then EvaluationsSpent."""
        new = list(dict.fromkeys(plan for plan in plans if plan not in self.cache))
        room = self.evaluations_left
        for plan, reward in zip(new[:room], self.score_plans(new[:room])):
            self._record(plan, float(reward))
        if len(new) > room:
            raise EvaluationsSpent
        return [self.cache[plan] for plan in plans]

    def _record(self, plan: Plan, reward: float) -> None:
        self.cache[plan] = reward
        self.evaluated.append(Evaluation(plan, reward, self.speedup(plan)))
        if reward > self.best_reward:
            self.best_reward, self.best_plan = reward, plan
        self.curve.append((len(self.cache), self.best_reward))
        if self.on_evaluation is not None:
            self.on_evaluation(self)

    @property
    def evaluations_left(self) -> int:
        return max(self.max_evaluations - len(self.cache), 0)

    @property
    def exhausted(self) -> bool:
        return len(self.cache) >= self.max_evaluations

    def result(self, name: str) -> SearchResult:
        if self.best_plan is None:
            raise UserError(f"searcher {name} evaluated no plan; give it a larger --evals")
        return SearchResult(name, self.best_plan, self.best_reward, len(self.cache), self.curve, self.evaluated)


@dataclass
class SearchRun:
    """What a searcher works with: the env it walks (its score_plans is the recorder), the
    recorder, its seed. A policy searcher starts from `policy` (a saved agent, or None for a
    new one) and lists in `agents` each agent it trains, with the evaluations made before it
    started."""

    env: CompressionEnv
    recorder: Recorder
    seed: int
    policy: object | None = None
    agents: list[tuple[object, int]] = field(default_factory=list)
