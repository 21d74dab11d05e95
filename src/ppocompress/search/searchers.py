"""Four searchers, one interface, the same budget of plan evaluations.

- ppo: our PPO (with invalid-action masking) on CompressionEnv: it rehearses on the env's
  free reward estimate built from the one-off sensitivities, scores its plan for each
  target improved on that estimate, then learns from evaluations;
- uniform: the same level in every layer, the best one that meets the target (when no
  level kept everywhere meets it, the layers least sensitive to dropping are dropped,
  as few as the target needs);
- random: the best of random plans that meet the target (random valid level each step);
- evolutionary: (1 + lambda) from the best uniform plan, mutating a few layers' levels
  and keeping only mutants that meet the target (EvoPress's level switches).
Every plan any searcher scores goes through one Recorder, which counts evaluations
(repeats are free), keeps the best plan and the history for the report.

A family (several targets) is searched by PPO in one run: one policy, the target in its
observation, one evaluation budget; each target's best is the best plan scored that
meets it (a plan meeting 6x also meets 4x). The other searchers run per target.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ppocompress.errors import UserError
from ppocompress.search.env import (
    BUDGET_TOLERANCE,
    CompressionEnv,
    PlansScorer,
    one_by_one,
)
from ppocompress.search.levels import drop_index

SEARCHERS = ("ppo", "uniform", "random", "evolutionary")
RANDOM_PATIENCE = 1000  # draws in a row of plans already scored after which random search stops


class BudgetSpent(Exception):
    """Raised by the Recorder when the evaluation budget is used up."""


@dataclass
class SearchResult:
    searcher: str
    best_levels: list[int]
    best_reward: float
    evaluations: int
    curve: list[tuple[int, float]]  # (evaluations so far, best reward so far)
    evaluated: list[tuple[list[int], float, float]] = field(default_factory=list)  # levels, reward, predicted speedup
    policy: object | None = field(default=None, repr=False, compare=False)  # ppo: the agent whose plans won (not saved here)

    def to_dict(self) -> dict:
        return {"searcher": self.searcher, "best_levels": self.best_levels, "best_reward": self.best_reward,
                "evaluations": self.evaluations, "curve": self.curve,
                "evaluated": [[levels, reward, speedup] for levels, reward, speedup in self.evaluated]}

    @classmethod
    def from_dict(cls, data: dict) -> "SearchResult":
        return cls(data["searcher"], data["best_levels"], data["best_reward"], data["evaluations"],
                   [tuple(point) for point in data["curve"]], [tuple(e) for e in data["evaluated"]])

    def meeting(self, valid: Callable[[list[int]], bool], known: list[tuple[list[int], float, float]] = ()) -> "SearchResult":
        """The same run seen by one target of a family: only the plans that meet it count
        (best, curve, finalists); evaluations stay the run's. `known`: plans scored before
        the run, at no cost to it, that count too."""
        own = {tuple(e[0]) for e in self.evaluated}
        carried = [e for e in known if valid(e[0])]
        evaluated = [e for e in carried if tuple(e[0]) not in own] + [e for e in self.evaluated if valid(e[0])]
        if not evaluated:
            raise UserError(f"searcher {self.searcher} scored no plan meeting one of the targets; give it a larger --evals")
        best = max(evaluated, key=lambda e: e[1])
        curve, best_reward = [], max((e[1] for e in carried), default=float("-inf"))
        for count, (levels, reward, _) in enumerate(self.evaluated, start=1):
            if valid(levels) and reward > best_reward:
                best_reward = reward
            if best_reward > float("-inf"):
                curve.append((count, best_reward))
        return SearchResult(self.searcher, list(best[0]), best[1], self.evaluations, curve, evaluated, self.policy)


class Recorder:
    """Wraps score_plans(plans) -> rewards: counts, caches, and remembers the best. Plans
    are recorded in the order given, as their rewards arrive, whatever scores them."""

    def __init__(self, score_plans: PlansScorer, budget: int, speedup: Callable[[list[int]], float],
                 on_evaluation: Callable[["Recorder"], None] | None = None):
        self.score_plans, self.budget, self.speedup, self.on_evaluation = score_plans, budget, speedup, on_evaluation
        self.cache: dict[tuple[int, ...], float] = {}
        self.best_levels: list[int] | None = None
        self.best_reward = float("-inf")
        self.curve: list[tuple[int, float]] = []
        self.evaluated: list[tuple[list[int], float, float]] = []

    def __call__(self, plans: list[list[int]]) -> list[float]:
        """The plans' rewards; the new ones scored up to the budget, then BudgetSpent."""
        new = list({tuple(levels): None for levels in plans if tuple(levels) not in self.cache})
        room = max(self.budget - len(self.cache), 0)
        for key, reward in zip(new[:room], self.score_plans([list(key) for key in new[:room]])):
            self._record(list(key), float(reward))
        if len(new) > room:
            raise BudgetSpent
        return [self.cache[tuple(levels)] for levels in plans]

    def _record(self, levels: list[int], reward: float) -> None:
        self.cache[tuple(levels)] = reward
        self.evaluated.append((levels, reward, self.speedup(levels)))
        if reward > self.best_reward:
            self.best_reward, self.best_levels = reward, levels
        self.curve.append((len(self.cache), self.best_reward))
        if self.on_evaluation is not None:
            self.on_evaluation(self)

    @property
    def exhausted(self) -> bool:
        return len(self.cache) >= self.budget

    def result(self, name: str) -> SearchResult:
        if self.best_levels is None:
            raise UserError(f"searcher {name} evaluated no plan; give it a larger --evals")
        return SearchResult(name, self.best_levels, self.best_reward, len(self.cache), self.curve, self.evaluated)


EnvFactory = Callable[[PlansScorer], CompressionEnv]


def run_searcher(name: str, make_env: EnvFactory, score_plans: PlansScorer, evaluations: int, seed: int,
                 on_evaluation: Callable[[Recorder], None] | None = None, policy=None) -> SearchResult:
    """make_env(score_plans) builds a CompressionEnv that scores plans with `score_plans`
    (in batches: PPO's rollouts, evolutionary's offspring, random's draws). policy: a saved
    PPO agent (ppo only) to start from instead of a new one."""
    if name not in SEARCHERS:
        raise UserError(f"unknown searcher {name!r}; use one of {', '.join(SEARCHERS)}")
    if policy is not None and name != "ppo":
        raise UserError(f"a saved policy starts the ppo searcher, not {name}")
    probe = make_env(score_plans)
    recorder = Recorder(score_plans, evaluations, probe.cost.speedup, on_evaluation)
    env = make_env(recorder)
    agents: list[tuple[object, int]] = []  # ppo: each agent and the evaluations made before it started
    try:
        if name == "ppo":
            _ppo(env, recorder, seed, agents, policy)
        else:
            {"uniform": _uniform, "random": _random, "evolutionary": _evolutionary}[name](env, recorder, seed)
    except BudgetSpent:
        pass
    result = recorder.result(name)
    if agents:
        result.policy = _winning_agent(agents, result, env)
    return result


def _winning_agent(agents: list[tuple[object, int]], result: SearchResult, env: CompressionEnv):
    """The agent that found the best plan for the most targets (the later one on a tie)."""
    wins = [0] * len(agents)
    for target in range(len(env.targets)):
        valid = [(reward, index) for index, (levels, reward, _) in enumerate(result.evaluated) if env.is_valid_plan(levels, target)]
        if valid:
            found = max(valid, key=lambda e: e[0])[1]  # the first evaluation of the best reward
            wins[max(i for i, (_, start) in enumerate(agents) if start <= found)] += 1
    return agents[max(range(len(agents)), key=lambda i: (wins[i], i))][0]


def uniform_plans(env: CompressionEnv) -> list[list[int]]:
    """Each kept level in every layer, with the fewest layers dropped that meets the budget
    (those whose one-off drop loses least); a level no number of drops brings within the
    budget gives no plan."""
    drop = drop_index(env.menu)
    order = [] if drop is None else sorted(range(env.num_layers), key=lambda layer: env.sensitivity[layer, drop])
    plans = []
    for level, choice in enumerate(env.menu):
        if choice.drop:
            continue
        levels = [level] * env.num_layers
        for layer in [None, *order[:-1]]:  # a plan keeps at least one layer
            if layer is not None:
                levels[layer] = drop
            if env.is_valid_plan(levels):
                plans.append(list(levels))
                break
    return plans


def _uniform(env: CompressionEnv, recorder: Recorder, seed: int) -> None:
    recorder(uniform_plans(env))


def _random_plan(env: CompressionEnv, rng: np.random.Generator) -> list[int]:
    env.reset()
    levels = []
    for _ in range(env.num_layers):
        level = int(rng.choice(np.flatnonzero(env.action_masks())))
        levels.append(level)
        env.levels.append(level)
    return levels


def _random(env: CompressionEnv, recorder: Recorder, seed: int) -> None:
    """Draws as many new plans as the budget has room for, then scores them as one batch,
    until the budget is spent or RANDOM_PATIENCE draws in a row found nothing new."""
    rng = np.random.default_rng(seed)
    misses = 0
    while not recorder.exhausted and misses < RANDOM_PATIENCE:
        batch: dict[tuple[int, ...], None] = {}
        while len(batch) < recorder.budget - len(recorder.cache) and misses < RANDOM_PATIENCE:
            key = tuple(_random_plan(env, rng))
            misses = misses + 1 if key in recorder.cache or key in batch else 0
            batch.setdefault(key, None)
        recorder([list(key) for key in batch])


def _evolutionary(env: CompressionEnv, recorder: Recorder, seed: int, offspring: int = 8, max_mutations: int = 3) -> None:
    rng = np.random.default_rng(seed)
    starts = uniform_plans(env) or [_random_plan(env, rng)]
    parent, parent_reward = best_of(starts, recorder(starts))  # the best uniform plan is the first parent, as in EvoPress
    stale = 0
    while not recorder.exhausted and stale < 200:
        children = []
        for _ in range(offspring * 20):
            child = list(parent)
            for layer in rng.choice(env.num_layers, size=rng.integers(1, max_mutations + 1), replace=False):
                child[layer] = int(rng.integers(len(env.menu)))
            if child != parent and env.is_valid_plan(child):
                children.append(child)
            if len(children) == offspring:
                break
        if not children:
            stale += 1
            continue
        best_child, reward = best_of(children, recorder(children))
        if reward >= parent_reward:
            parent, parent_reward, stale = best_child, reward, 0
        else:
            stale += 1


def best_of(plans: list[list[int]], values: list[float]) -> tuple[list[int], float]:
    """The plan of the highest value (the first of equals) and its value."""
    index = max(range(len(plans)), key=values.__getitem__)
    return plans[index], values[index]


REHEARSAL_EPISODES = 2000  # the least each PPO agent first learns from the free reward estimate
REHEARSAL_MAX_EPISODES = 8000
REHEARSAL_LOOKS = 3  # looks at the greedy plan within the least rehearsal; then one a third of it
REHEARSAL_MIN_GAIN = 0.1  # estimated reward a look must add (the plan's loss down by 10%) for rehearsal to go on
PATIENCE = 2  # updates without a new plan after which an agent is taken to have converged
EPISODES_PER_UPDATE = 32
MINIBATCHES = 3
IMPROVEMENT = 1e-9  # the least drop in estimated loss a move on the estimate must bring (else rounding could cycle)


def _ppo(env: CompressionEnv, recorder: Recorder, seed: int, agents: list, policy=None) -> None:
    """PPO agents, one after another until the evaluations are spent. Each rehearses on
    the env's free reward estimate (the layers' one-off quality drops added up: no
    evaluation spent), then learns from real evaluations with the estimate as
    potential-based shaping. Plans scored before cost nothing, so a converging agent
    trains on for free; once it proposes no new plan for PATIENCE updates, a new agent
    (next seed) starts with the evaluations left. Restarts matter: on MiniLM single
    agents converged within ~50 evaluations, to plans that differed by seed. Each agent
    is appended to `agents` with the evaluations made before it. A saved `policy` is the
    first agent, and learns on without rehearsing. Each agent's first evaluations are its
    plan for each target improved on the estimate (_estimated_best_plan): one policy over
    a family generalises across its targets, and on MiniLM the 2x-6x family's (seed 0)
    never proposed the dense model in 400 evaluations, though 2x and 3x allow it and the
    estimate ranks it first there (its 2x member kept 0.9937 held-out, the dense model 1.0).

    Settings, chosen on MiniLM at a 4x target by how close rehearsal came to the exact
    optimum of the estimate (a knapsack solved by dynamic programming): 32 episodes an
    update (fewer were noisier), Monte Carlo returns (lambda 1: shaping then biases
    nothing), normalised observations (the sensitivities are small numbers), and
    MINIBATCHES an update (MiniLM: 64 steps each; on SmolLM2's 30 layers at 2x, 320-step
    minibatches rehearsed to 5.52 of the optimum's 5.66 in 56 s, 64-step ones to 5.46 in 107 s)."""
    from ppocompress.rl import PPO

    config = ppo_config(env.num_layers)
    score, env.shaped, env.defer_rewards = env.score_plans, True, True  # a rollout's plans scored as one batch
    fruitless = 0
    for restart in itertools.count():
        if recorder.exhausted or fruitless == 3:
            return
        before = len(recorder.cache)
        if restart == 0 and policy is not None:
            agent = policy
            agent.config = config  # the rollout fits this model's depth; the network is the saved one
            agent.set_env(env)
        else:
            agent = PPO(env, config, seed=seed + 1000 * restart)
            env.score_plans = one_by_one(env.estimated_reward)
            _rehearse(agent, env)
            env.score_plans = score
        agents.append((agent, before))
        env.score_plans([_estimated_best_plan(agent, env, target) for target in range(len(env.targets))])
        agent.learn(env.num_layers * recorder.budget * 4, callback=_until_converged(recorder))
        fruitless = fruitless + 1 if len(recorder.cache) == before else 0


def ppo_config(num_layers: int):
    """The PPO settings of the search (see _ppo), for a model of num_layers layers."""
    from ppocompress.rl import PPOConfig

    steps = num_layers * EPISODES_PER_UPDATE
    return PPOConfig(
        n_envs=1, n_steps=steps, batch_size=steps // MINIBATCHES, n_epochs=10, gamma=1.0, gae_lambda=1.0,
        learning_rate=1e-3, anneal_lr=False, ent_coef=0.01, hidden_sizes=(64, 64), target_kl=0.05,
        normalize_observations=True,
    )


def _rehearse(agent, env: CompressionEnv) -> None:
    """Learns from the estimate for REHEARSAL_EPISODES, then on while the greedy plan's
    estimated reward still rises by REHEARSAL_MIN_GAIN a look, up to REHEARSAL_MAX_EPISODES.
    A fixed length did not scale with depth: on MiniLM's 6 layers 2,000 episodes came
    within 0.2 of the estimate's optimum (5 of 6 agents within 0.07); on SmolLM2's 30 at
    2x the greedy plan was at 5.29 of the optimum's 5.66 after 2,000 episodes and at 5.52
    after 3,400, where rehearsal stopped."""
    probe = copy.copy(env)  # scores with the estimate; walked apart from the agent's env, which is mid-rollout
    least = math.ceil(REHEARSAL_EPISODES / EPISODES_PER_UPDATE)
    most = math.ceil(REHEARSAL_MAX_EPISODES / EPISODES_PER_UPDATE)
    look = math.ceil(least / REHEARSAL_LOOKS)
    updates, previous = 0, float("-inf")
    while updates < most:
        agent.learn(look * agent.config.n_steps)
        updates += look
        reward = float(np.mean([probe.estimated_reward(_greedy_plan(agent, probe, t)) for t in range(len(env.targets))]))
        if updates >= least and reward - previous < REHEARSAL_MIN_GAIN:
            return
        previous = reward


def _greedy_plan(agent, env: CompressionEnv, target: int = 0) -> list[int]:
    """The agent's most likely plan for the family's `target`-th target, scored by the
    env's score_plans on its last step (the estimate, during rehearsal)."""
    deferring, env.defer_rewards = env.defer_rewards, False
    try:
        observation, info = env.reset(options={"target": target})
        done = False
        while not done:
            action = agent.predict(observation, deterministic=True, action_mask=info["action_mask"])
            observation, _, done, _, info = env.step(action)
    finally:
        env.defer_rewards = deferring
    return info["levels"]


def _estimated_best_plan(agent, env: CompressionEnv, target: int) -> list[int]:
    """The agent's plan for the family's `target`-th target, with no evaluation: its
    greedy plan, walked on the free estimate, then improved on that estimate
    (_improve_on_estimate). A policy overshoots a target it was not trained on: on MiniLM
    the 2x-6x family's policy chose its 5x plan, 5.11x, for 4.5x."""
    probe = copy.copy(env)  # scores with the estimate: the plan is scored once it is final
    probe.score_plans = one_by_one(env.estimated_reward)
    return _improve_on_estimate(env, _greedy_plan(agent, probe, target), target)


def _improve_on_estimate(env: CompressionEnv, levels: list[int], target: int) -> list[int]:
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
    levels = list(levels)
    while True:
        now = np.array(levels)
        # per (layer, level), flattened: what moving that layer to that level changes
        kept_change = (kept[None, :] - kept[now][:, None]).reshape(-1)
        drop_change = -kept_change
        loss_change = ((sensitivity - sensitivity[every_layer, now][:, None]).reshape(-1)
                       + drop_change * (env.drop_interaction @ (1 - kept[now]))[layer_of])  # the pairs with the layers dropped now
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
            return levels
        moves = [best_single] if single[best_single] <= pair.flat[best_pair] else np.unravel_index(best_pair, pair.shape)
        for move in moves:
            levels[int(layer_of[move])] = int(move % len(env.menu))


def _until_converged(recorder: Recorder):
    """A PPO callback that stops learning after PATIENCE updates without a new evaluation."""
    seen = {"evaluations": len(recorder.cache), "idle": 0}

    def callback(agent, metrics) -> bool:
        idle = len(recorder.cache) == seen["evaluations"]
        seen["evaluations"], seen["idle"] = len(recorder.cache), seen["idle"] + 1 if idle else 0
        return seen["idle"] < PATIENCE

    return callback
