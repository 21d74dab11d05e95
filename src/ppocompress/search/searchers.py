"""The searchers, as a registry: one interface, the same number of plan evaluations each.

- ppo (ppo_search.py): our PPO on CompressionEnv, rehearsed on the free reward estimate;
  the searcher a run delivers by default;
- uniform, random, evolutionary (baselines.py): what PPO is measured against;
- estimate (on_estimate.py): the plan the one-off sensitivities added up pick, one
  evaluation: what evaluating whole plans adds.
Every plan any searcher scores goes through one Recorder (recorder.py), which counts
evaluations (repeats are free), keeps the best plan and the history for the report.

A target set (several targets) is searched in one run by a searcher that takes the
target from its observation (PPO: one policy, one number of evaluations; each target's
best is the best plan scored that meets it, since a plan meeting 6x also meets 4x). The
others run once per target, the evaluations shared out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ppocompress.errors import UserError
from ppocompress.search import baselines
from ppocompress.search.env import CompressionEnv
from ppocompress.search.on_estimate import estimate_search
from ppocompress.search.ppo_search import ppo_search
from ppocompress.search.recorder import EvaluationsSpent, Recorder, SearchResult, SearchRun
from ppocompress.search.reward import PlansScorer


@dataclass(frozen=True)
class Searcher:
    name: str
    run: Callable[[SearchRun], None]  # searches until EvaluationsSpent or it is done
    whole_target_set: bool  # searches every target of a set in one run (the others: a run per target)
    policy: bool  # learns a policy: saved after the run, and a saved one (--policy) can start it
    # The most evaluations it makes per target, given the menu's levels (None: all it is allowed)
    most_per_target: Callable[[int], int] | None = None


SEARCHERS: dict[str, Searcher] = {searcher.name: searcher for searcher in (  # the delivered one first, then the baselines
    Searcher("ppo", ppo_search, whole_target_set=True, policy=True),
    Searcher("uniform", baselines.uniform_search, whole_target_set=False, policy=False, most_per_target=lambda levels: levels),
    Searcher("random", baselines.random_search, whole_target_set=False, policy=False),
    Searcher("evolutionary", baselines.evolutionary_search, whole_target_set=False, policy=False),
    Searcher("estimate", estimate_search, whole_target_set=False, policy=False, most_per_target=lambda levels: 1),
)}

DEFAULT_SEARCHER = "ppo"  # the searcher whose plan a run delivers unless told otherwise


def get_searcher(name: str) -> Searcher:
    if name not in SEARCHERS:
        raise UserError(f"unknown searcher {name!r}; use one of {', '.join(SEARCHERS)}")
    return SEARCHERS[name]


def policy_searchers() -> list[str]:
    """The searchers a saved policy can start (--policy)."""
    return [name for name, searcher in SEARCHERS.items() if searcher.policy]


EnvFactory = Callable[[PlansScorer], CompressionEnv]


def run_searcher(name: str, make_env: EnvFactory, score_plans: PlansScorer, max_evaluations: int, seed: int,
                 on_evaluation: Callable[[Recorder], None] | None = None, policy=None) -> SearchResult:
    """make_env(score_plans) builds a CompressionEnv that scores plans with `score_plans`
    (in batches: PPO's rollouts, evolutionary's offspring, random's draws). policy: a saved
    agent to start from instead of a new one (a policy searcher only)."""
    searcher = get_searcher(name)
    if policy is not None and not searcher.policy:
        raise UserError(f"a saved policy starts the {' or '.join(policy_searchers())} searcher, not {name}")
    probe = make_env(score_plans)
    recorder = Recorder(score_plans, max_evaluations, probe.cost.speedup, on_evaluation)
    run = SearchRun(make_env(recorder), recorder, seed, policy)
    try:
        searcher.run(run)
    except EvaluationsSpent:
        pass
    result = recorder.result(name)
    if run.agents:
        result.policy = _winning_agent(run.agents, result, run.env)
    return result


def _winning_agent(agents: list[tuple[object, int]], result: SearchResult, env: CompressionEnv):
    """The agent that found the best plan for the most targets (the later one on a tie)."""
    wins = [0] * len(agents)
    for target in range(len(env.targets)):
        valid = [(e.reward, index) for index, e in enumerate(result.evaluated) if env.is_valid_plan(e.plan, target)]
        if valid:
            found = max(valid, key=lambda e: e[0])[1]  # the first evaluation of the best reward
            wins[max(i for i, (_, start) in enumerate(agents) if start <= found)] += 1
    return agents[max(range(len(agents)), key=lambda i: (wins[i], i))][0]
