"""CompressionEnv: a Gymnasium environment whose episode walks the layers.

At step i the agent picks layer i's level from the menu. The budget (a target speedup,
or a target size fraction) is always met: a level is masked out when, even with every
later layer at its cheapest level, the total would exceed the budget (AMC's clamping,
done as masking so the agent learns only from choices that were really made). An agent
that ignores the mask (an RL library without action masking) gets a masked level
replaced by the allowed level nearest to it in cost, so its episodes meet the budget too.
The reward comes at the end: the plan's quality, -log(1 - cosine to the dense model).

With shaped=True each step also pays the change in a cheap estimate of that reward (the
one-off quality drops of the layers chosen so far, added up, with what each pair of
dropped layers was measured to lose beyond that), and the last step pays the
true reward minus the estimate: potential-based shaping, so an episode's return is the
true reward up to a constant and the best plan is unchanged, but each choice is credited
at once instead of through one number at the end of the episode.

With defer_rewards=True an episode's true reward is left pending (rl.rollout's
PENDING_REWARD) and settled for the whole rollout at once, so that its plans can be
scored in parallel.

Given several targets (a target set), episodes take them in turn (or the one reset's
options name) and the observation carries the target's budget, so one policy learns
them all: a plan's reward does not depend on the target, only which plans are allowed.

A budget here is always a cost: the most a plan may cost for its target. (How many plans
a searcher may have evaluated is its max_evaluations, recorder.py.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppocompress.errors import UserError
from ppocompress.rl.rollout import PENDING_REWARD
from ppocompress.search.cost_table import CostTable
from ppocompress.search.levels import DENSE, DENSE_INT8_LEVEL, Level
from ppocompress.search.plan import Plan
from ppocompress.search.reward import PlansScorer, lost_from_additive, reward_from_loss

SHAPING_FLOOR = 1e-3  # quality drop below which the shaping estimate stops rewarding (cosine 0.999)
BUDGET_TOLERANCE = 1e-9  # a plan's cost may exceed its budget by this much (float sums of layer costs)


SPEEDUP, INT8_SPEEDUP, SIZE = "speedup", "int8-speedup", "size"  # the kinds of target
TARGET_OPTIONS = {SPEEDUP: "--target-speedup", INT8_SPEEDUP: "--target-int8-speedup", SIZE: "--target-size"}


@dataclass
class Target:
    """kind SPEEDUP: the plan's cost at most dense PyTorch fp32's / value; INT8_SPEEDUP: at
    most the dense int8 model's on the serving runtime / value (what quantizing alone gives
    is the bar a decoder's search must clear); SIZE: weights of at most value times dense
    PyTorch fp32's bytes (cost_table.size_table)."""

    kind: str
    value: float

    @property
    def label(self) -> str:
        """"4x", "1.4x int8" or "size 0.5"."""
        return {SPEEDUP: f"{self.value:g}x", INT8_SPEEDUP: f"{self.value:g}x int8"}.get(self.kind, f"size {self.value:g}")

    @property
    def description(self) -> str:
        """"4x speedup", "1.4x int8 speedup" or "size 0.5"."""
        return self.label if self.kind == SIZE else f"{self.label} speedup"

    def budget(self, reference_total: float, int8_total: float | None) -> float:
        """The most a plan may cost: reference_total is dense PyTorch fp32's (or the dense
        model's size), int8_total the dense int8 model's on the serving runtime (None: a
        menu without int8)."""
        option = TARGET_OPTIONS.get(self.kind)
        if option is None:
            raise UserError(f"unknown target kind {self.kind!r}")
        if not math.isfinite(self.value):
            raise UserError(f"{option} must be a finite number, got {self.value}")
        if self.kind == SIZE:
            if not 0.0 < self.value <= 1.0:
                raise UserError(f"--target-size must be a fraction in (0, 1], got {self.value}")
            return reference_total * self.value
        if self.value < 1.0:
            raise UserError(f"{option} must be >= 1, got {self.value}")
        if self.kind == INT8_SPEEDUP and int8_total is None:
            raise UserError(f"{option} needs a menu with a dense int8 level; use --target-speedup")
        return (reference_total if self.kind == SPEEDUP else int8_total) / self.value


def budgets(cost: CostTable, menu: list[Level], targets: list[Target]) -> list[float]:
    """Each target's budget in the cost table's units."""
    int8_total = (cost.total([menu.index(DENSE_INT8_LEVEL)] * cost.num_layers) if DENSE_INT8_LEVEL in menu else None)
    return [target.budget(cost.reference_total, int8_total) for target in targets]


def check_reachable(cost: CostTable, menu: list[Level], targets: list[Target]) -> None:
    """Fails in one line for a target no plan meets. A plan must keep a layer, so the most
    compressed plan is one layer at its cheapest kept level and every other one at the
    cheapest level overall."""
    cheapest_kept = min(c for c, level in zip(cost.per_level, menu) if not level.drop)
    lowest = cost.base + cheapest_kept + (cost.num_layers - 1) * min(cost.per_level)
    for target, budget in zip(targets, budgets(cost, menu, targets)):
        if lowest > budget + BUDGET_TOLERANCE:
            reaches = (f"size {lowest / cost.reference_total:.3f} of dense PyTorch fp32" if target.kind == SIZE
                       else f"{cost.reference_total / lowest:.2f}x dense PyTorch fp32")
            raise UserError(f"target {target.description} cannot be met: the most compressed plan reaches "
                            f"{reaches} by the cost table; ask for less")


class CompressionEnv(gym.Env):
    """Observation per step (all in [0, 1] or small reals):
    [layer position, layer's share of dense cost, the target's budget as a share of the
     dense cost, budget used, budget left, cost of the cheapest completion, previous level
     (normalised), block influence, importance spread, sensitivity at each level (quality
     drop when only this layer is compressed), the later layers' mean sensitivity at each
     level]. Every entry is relative (positions as fractions, costs as shares), so a
     policy trained on one model can act on another with the same menu.
    """

    metadata = {"render_modes": []}

    def __init__(self, cost: CostTable, menu: list[Level], target: Target | list[Target], score_plans: PlansScorer,
                 layer_features: np.ndarray, sensitivity: np.ndarray, shaped: bool = False, shared_loss: float = 0.0,
                 drop_interaction: np.ndarray | None = None):
        """target: one, or a target set's (taken in turn by episode); score_plans(plans) ->
        their rewards (one_by_one(score) from a function of one plan); layer_features:
        (layers, 2) block influence and importance spread; sensitivity: (layers, len(menu))
        one-off quality drops; shared_loss: the quality
        drop every plan carries (a causal LM's int8 output head), which the estimate adds
        to the layers' own; drop_interaction: (layers, layers), symmetric, what dropping
        both layers loses beyond their one-off drops (None: nothing)."""
        super().__init__()
        self.cost, self.menu = cost, menu
        self.targets = [target] if isinstance(target, Target) else list(target)
        self.score_plans = score_plans
        self.defer_rewards = False
        self._pending: list[Plan] = []
        self.num_layers = cost.num_layers
        self.budgets = budgets(cost, menu, self.targets)
        self.cheapest = min(cost.per_level)
        self.cheapest_kept = min(c for c, level in zip(cost.per_level, menu) if not level.drop)
        check_reachable(cost, menu, self.targets)
        self.layer_features = np.asarray(layer_features, dtype=np.float32)
        self.sensitivity = np.asarray(sensitivity, dtype=np.float32)
        self.shaped, self.shared_loss = shaped, shared_loss
        layers = self.num_layers
        self.drop_interaction = (np.zeros((layers, layers)) if drop_interaction is None
                                 else np.asarray(drop_interaction, dtype=np.float64))
        self.drops = np.array([level.drop for level in menu])
        n_obs = 9 + 2 * len(menu)
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(n_obs,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(menu))
        self.levels: list[int] = []
        self.target_index = 0
        self._episodes = 0

    @property
    def target(self) -> Target:
        """The current episode's target."""
        return self.targets[self.target_index]

    @property
    def budget(self) -> float:
        return self.budgets[self.target_index]

    # --- Gymnasium API ------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """options={"target": i} walks the target set's i-th target; otherwise the next in turn."""
        super().reset(seed=seed)
        if options is not None and "target" in options:
            self.target_index = int(options["target"])
        else:
            self.target_index = self._episodes % len(self.targets)
            self._episodes += 1
        self.levels = []
        return self._observation(), {"action_mask": self.action_masks()}

    def step(self, action):
        action = self.nearest_allowed(int(action))
        before = self.estimated_reward(self.levels) if self.shaped else 0.0
        self.levels.append(action)
        done = len(self.levels) == self.num_layers
        info = {"action_mask": self.action_masks() if not done else np.ones(len(self.menu), dtype=bool)}
        if done and self.defer_rewards:
            info[PENDING_REWARD] = len(self._pending)
            self._pending.append(Plan.of(self.levels))
            reward = -before
        elif done:
            reward = self.score_plan(Plan.of(self.levels)) - before
        else:
            reward = self.estimated_reward(self.levels) - before if self.shaped else 0.0
        if done:
            info["levels"] = list(self.levels)  # the plan's menu indices, a plain list for any Gymnasium agent
            info["cost"] = self.cost.total(self.levels)
        observation = self._observation() if not done else np.zeros(self.observation_space.shape, dtype=np.float32)
        return observation, reward, done, False, info

    def score_plan(self, plan: Plan) -> float:
        return float(next(iter(self.score_plans([plan]))))

    def settle_pending(self) -> dict[int, float]:
        """The rewards of the episodes left pending (defer_rewards), scored as one batch."""
        plans, self._pending = self._pending, []
        return {token: float(reward) for token, reward in enumerate(self.score_plans(plans))}

    def nearest_allowed(self, action: int) -> int:
        """`action` if the mask allows it, else the allowed level nearest to it in cost
        (clamping): every level of the action space is a legal step, as Gymnasium agents assume."""
        mask = self.action_masks()
        if mask[action]:
            return action
        per_level = self.cost.per_level
        return int(min(np.flatnonzero(mask), key=lambda i: abs(per_level[i] - per_level[action])))

    def action_masks(self) -> np.ndarray:
        """Levels after which the budget stays reachable by the cheapest completion that
        still keeps at least one layer."""
        remaining_after = self.num_layers - len(self.levels) - 1
        spent = self.cost.base + sum(self.cost.per_level[i] for i in self.levels)
        kept_before = any(not self.menu[i].drop for i in self.levels)
        mask = np.zeros(len(self.menu), dtype=bool)
        for index, (cost, level) in enumerate(zip(self.cost.per_level, self.menu)):
            kept = kept_before or not level.drop
            if not kept and remaining_after == 0:
                continue  # would drop every layer
            floor = remaining_after * self.cheapest + (0.0 if kept else self.cheapest_kept - self.cheapest)
            mask[index] = spent + cost + floor <= self.budget + BUDGET_TOLERANCE
        return mask

    def is_valid_plan(self, plan: Plan, target: int | None = None) -> bool:
        """Meets the budget (of the current target, or the target set's `target`-th) and keeps at least one layer."""
        budget = self.budget if target is None else self.budgets[target]
        return self.cost.total(plan) <= budget + BUDGET_TOLERANCE and any(not self.menu[i].drop for i in plan)

    def estimated_loss(self, levels: Sequence[int]) -> float:
        """The quality lost, on reward.additive_loss's scale, if the layers' one-off drops and
        their dropped pairs' extras added up and the later layers stayed dense. `levels`: a
        plan, or the first layers' levels."""
        levels = list(levels)
        dropped = np.flatnonzero(self.drops[levels]) if levels else []
        pairs = self.drop_interaction[np.ix_(dropped, dropped)].sum() / 2 if len(dropped) > 1 else 0.0
        return self.shared_loss + sum(float(self.sensitivity[layer, level]) for layer, level in enumerate(levels)) + float(pairs)

    def estimated_reward(self, levels: Sequence[int]) -> float:
        """The reward estimated_loss gives (floored)."""
        return reward_from_loss(lost_from_additive(self.estimated_loss(levels)), SHAPING_FLOOR)

    # --- helpers ------------------------------------------------------------------
    def _observation(self) -> np.ndarray:
        i = len(self.levels)
        dense = self.cost.dense_total
        spent = self.cost.base + sum(self.cost.per_level[j] for j in self.levels)
        previous = self.levels[-1] / max(len(self.menu) - 1, 1) if self.levels else 0.0
        head = [
            i / self.num_layers,
            self.cost.per_level[DENSE] / dense,
            self.budget / dense,
            spent / self.budget,
            (self.budget - spent) / dense,
            (self.num_layers - i) * self.cheapest / dense,
            previous,
        ]
        features = self.layer_features[i] if i < self.num_layers else np.zeros(2, dtype=np.float32)
        sensitivity = self.sensitivity[i] if i < self.num_layers else np.zeros(len(self.menu), dtype=np.float32)
        # What the later layers would lose at each level: whether to spend budget here or keep it for them.
        later = self.sensitivity[i + 1:].mean(axis=0) if i + 1 < self.num_layers else np.zeros(len(self.menu), dtype=np.float32)
        observation = np.concatenate([np.asarray(head, dtype=np.float32), features, sensitivity, later])
        return np.clip(observation, -10.0, 10.0).astype(np.float32)
