"""The searchers PPO is measured against, on the same number of plan evaluations:

- uniform: the same level in every layer, the best one that meets the target (when no
  level kept everywhere meets it, the layers least sensitive to dropping are dropped,
  as few as the target needs);
- random: the best of random plans that meet the target (random valid level each step);
- evolutionary: (1 + lambda) from the best uniform plan, mutating a few layers' levels
  and keeping only mutants that meet the target (EvoPress's level switches).
"""

from __future__ import annotations

import numpy as np

from ppocompress.search.env import CompressionEnv
from ppocompress.search.levels import drop_index
from ppocompress.search.plan import Plan
from ppocompress.search.recorder import SearchRun

RANDOM_PATIENCE = 1000  # draws in a row of plans already scored after which random search stops
OFFSPRING = 8  # mutants scored as one batch, a generation
MAX_MUTATIONS = 3  # layers a mutant changes, at most
MUTANT_TRIES = 20  # draws per mutant wanted, within which a generation must find its mutants that meet the target
EVOLUTION_PATIENCE = 200  # generations in a row without a better plan after which evolution stops


def uniform_plans(env: CompressionEnv) -> list[Plan]:
    """Each kept level in every layer, with the fewest layers dropped that meets the cost budget
    (those whose one-off drop loses least); a level no number of drops brings within the
    budget gives no plan."""
    drop = drop_index(env.menu)
    order = [] if drop is None else sorted(range(env.num_layers), key=lambda layer: env.sensitivity[layer, drop])
    plans = []
    for level, choice in enumerate(env.menu):
        if choice.drop:
            continue
        plan = Plan.uniform(level, env.num_layers)
        for dropped in range(len(order) or 1):  # at most all layers but one: a plan keeps a layer
            plan = plan.with_levels({layer: drop for layer in order[:dropped]})
            if env.is_valid_plan(plan):
                plans.append(plan)
                break
    return plans


def uniform_search(run: SearchRun) -> None:
    run.recorder(uniform_plans(run.env))


def random_plan(env: CompressionEnv, rng: np.random.Generator) -> Plan:
    """A plan of a random allowed level in each layer, in turn."""
    env.reset()
    for _ in range(env.num_layers):
        env.levels.append(int(rng.choice(np.flatnonzero(env.action_masks()))))
    return Plan.of(env.levels)


def random_search(run: SearchRun) -> None:
    """Draws as many new plans as evaluations are left, then scores them as one batch,
    until none are left or RANDOM_PATIENCE draws in a row found nothing new."""
    recorder, rng = run.recorder, np.random.default_rng(run.seed)
    misses = 0
    while not recorder.exhausted and misses < RANDOM_PATIENCE:
        batch: dict[Plan, None] = {}
        while len(batch) < recorder.evaluations_left and misses < RANDOM_PATIENCE:
            plan = random_plan(run.env, rng)
            misses = misses + 1 if plan in recorder.cache or plan in batch else 0
            batch.setdefault(plan, None)
        recorder(list(batch))


def evolutionary_search(run: SearchRun) -> None:
    env, recorder, rng = run.env, run.recorder, np.random.default_rng(run.seed)
    starts = uniform_plans(env) or [random_plan(env, rng)]
    parent, parent_reward = best_of(starts, recorder(starts))  # the best uniform plan is the first parent, as in EvoPress
    stale = 0
    while not recorder.exhausted and stale < EVOLUTION_PATIENCE:
        children = _mutants(env, parent, rng)
        if not children:
            stale += 1
            continue
        best_child, reward = best_of(children, recorder(children))
        if reward >= parent_reward:
            parent, parent_reward, stale = best_child, reward, 0
        else:
            stale += 1


def _mutants(env: CompressionEnv, parent: Plan, rng: np.random.Generator) -> list[Plan]:
    """Up to OFFSPRING plans that meet the target, each `parent` with a few layers' levels redrawn."""
    children = []
    for _ in range(OFFSPRING * MUTANT_TRIES):
        child = list(parent)
        for layer in rng.choice(env.num_layers, size=rng.integers(1, MAX_MUTATIONS + 1), replace=False):
            child[layer] = int(rng.integers(len(env.menu)))
        mutant = Plan.of(child)
        if mutant != parent and env.is_valid_plan(mutant):
            children.append(mutant)
        if len(children) == OFFSPRING:
            break
    return children


def best_of(plans: list[Plan], values: list[float]) -> tuple[Plan, float]:
    """The plan of the highest value (the first of equals) and its value."""
    index = max(range(len(plans)), key=values.__getitem__)
    return plans[index], values[index]
