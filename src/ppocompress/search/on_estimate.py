"""The free estimate alone: plans chosen on the one-off sensitivities added up (the env's
estimated loss), with no evaluation. PPO starts each agent's plans from here; the
"estimate" searcher delivers it, so that a result shows what evaluating plans adds over
it (per-layer errors do not add up, which is why a search measures whole plans)."""

from __future__ import annotations

import numpy as np

from ppocompress.search.baselines import random_plan, uniform_plans
from ppocompress.search.env import BUDGET_TOLERANCE, CompressionEnv
from ppocompress.search.plan import Plan
from ppocompress.search.recorder import SearchRun

IMPROVEMENT = 1e-9  # the least drop in estimated loss a move on the estimate must bring (else rounding could cycle)


def estimate_search(run: SearchRun) -> None:
    """One evaluation (a searcher per target): of the uniform plans that meet the target,
    each improved on the estimate, the one of the lowest estimated loss."""
    env = run.env
    starts = uniform_plans(env) or [random_plan(env, np.random.default_rng(run.seed))]
    plans = [improve_on_estimate(env, plan, target=0) for plan in starts]
    run.recorder([min(plans, key=env.estimated_loss)])


def improve_on_estimate(env: CompressionEnv, plan: Plan, target: int) -> Plan:
    """Local search on the estimate: the change of one or two layers' levels that keeps
    the target and lowers the estimated loss most, until none lowers it. One layer at a
    time spends slack below the target; two trade a level for another (a dropped layer
    kept, another compressed more), which one at a time cannot do within a tight budget."""
    sensitivity = env.sensitivity.astype(np.float64)
    cost = np.asarray(env.cost.per_level, dtype=np.float64)
    kept = np.array([not level.drop for level in env.menu], dtype=int)
    every_layer = np.arange(env.num_layers)
    layer_of = np.repeat(every_layer, len(env.menu))  # of each flattened (layer, level) change
    budget = env.budgets[target] + BUDGET_TOLERANCE
    later_layer = layer_of[:, None] < layer_of[None, :]  # each pair of changes once, to two layers
    interaction = env.drop_interaction[layer_of][:, layer_of]  # between the layers of two changes
    levels = list(plan)
    while True:
        now = np.array(levels)
        # per (layer, level), flattened: what moving that layer to that level changes
        kept_change = (kept[None, :] - kept[now][:, None]).reshape(-1)
        drop_change = -kept_change
        # ... and the pairs with the layers dropped now
        loss_change = ((sensitivity - sensitivity[every_layer, now][:, None]).reshape(-1)
                       + drop_change * (env.drop_interaction @ (1 - kept[now]))[layer_of])
        cost_change = (cost[None, :] - cost[now][:, None]).reshape(-1)
        room, kept_now = budget - env.cost.total(levels), int(kept[now].sum())
        single = np.where((cost_change <= room) & (kept_now + kept_change >= 1), loss_change, np.inf)
        fits = ((cost_change[:, None] + cost_change[None, :] <= room)
                & (kept_now + kept_change[:, None] + kept_change[None, :] >= 1)
                & later_layer)
        # two changes' loss, and the pair of their two layers (each change counted it against the other's old level)
        joint = loss_change[:, None] + loss_change[None, :] + drop_change[:, None] * drop_change[None, :] * interaction
        pair = np.where(fits, joint, np.inf)
        best_single, best_pair = int(single.argmin()), int(pair.argmin())
        if min(single[best_single], pair.flat[best_pair]) >= -IMPROVEMENT:
            return Plan.of(levels)
        moves = [best_single] if single[best_single] <= pair.flat[best_pair] else np.unravel_index(best_pair, pair.shape)
        for move in moves:
            levels[int(layer_of[move])] = int(move % len(env.menu))
