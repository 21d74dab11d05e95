"""CompressionEnv: a valid Gymnasium env whose episodes never end over budget."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

from ppocompress.compress import Precision
from ppocompress.errors import UserError
from ppocompress.search import CompressionEnv, CostTable, Target, default_menu
from ppocompress.search.env import budgets
from ppocompress.search.levels import DENSE_INT8_LEVEL
from ppocompress.search.reward import one_by_one

MENU = default_menu()


def synthetic_table(num_layers: int = 6) -> CostTable:
    """Layer cost shrinking with kept heads/FFN, int8 2.5x cheaper, drop free; base 10% of dense."""
    per_level = []
    for level in MENU:
        if level.drop:
            per_level.append(0.0)
            continue
        cost = 0.35 * level.group_keep + 0.65 * level.neuron_keep
        per_level.append(cost / (2.5 if level.weights == Precision.INT8 else 1.0))
    return CostTable("flops", base=0.1 * num_layers * per_level[0] / 0.9, per_level=per_level, num_layers=num_layers)


def make_env(target: Target, num_layers: int = 6, score=None) -> CompressionEnv:
    return CompressionEnv(
        synthetic_table(num_layers), MENU, target,
        score_plans=one_by_one(score or (lambda levels: -float(np.mean(levels)))),
        layer_features=np.random.default_rng(0).random((num_layers, 2)),
        sensitivity=np.random.default_rng(1).random((num_layers, len(MENU))),
    )


def test_env_passes_the_gymnasium_checker():
    check_env(make_env(Target("speedup", 2.0)), skip_render_check=True)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["speedup", "size"]),
    value=st.floats(0.0, 1.0),
    num_layers=st.integers(2, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_no_episode_ends_over_budget(kind, value, num_layers, seed):
    table = synthetic_table(num_layers)
    cheapest_kept = min(c for c, level in zip(table.per_level, MENU) if not level.drop)
    max_speedup = table.dense_total / (table.base + cheapest_kept + (num_layers - 1) * min(table.per_level))
    target = (Target("speedup", 1.0 + value * (max_speedup - 1.0)) if kind == "speedup"
              else Target("size", 1.0 - value * (1 - 1 / max_speedup)))
    env = make_env(target, num_layers)
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    done = False
    while not done:
        allowed = np.flatnonzero(info["action_mask"])
        assert allowed.size > 0  # never a dead end
        _, _, done, _, info = env.step(int(rng.choice(allowed)))
    assert info["cost"] <= env.budget * (1 + 1e-9)
    assert env.is_valid_plan(info["levels"])  # at least one layer kept


def test_an_episode_cannot_drop_every_layer():
    table = synthetic_table(3)
    table.base = 0.0  # with no fixed cost, dropping everything would be "free"
    env = CompressionEnv(table, MENU, Target("speedup", 20.0), one_by_one(lambda plan: 0.0), np.zeros((3, 2)),
                         np.zeros((3, len(MENU))))
    env.reset()
    drop = len(MENU) - 1
    env.step(drop)
    env.step(drop)
    assert not env.action_masks()[drop] and env.action_masks().any()


def test_a_masked_level_becomes_the_allowed_level_nearest_in_cost():
    env = make_env(Target("speedup", 3.0))
    env.reset()
    while env.action_masks()[0]:  # stay dense until the budget forbids it (3x cannot stay dense)
        env.step(0)
    assert len(env.levels) < env.num_layers
    allowed, costs = np.flatnonzero(env.action_masks()), env.cost.per_level
    env.step(0)
    taken = env.levels[-1]
    assert taken in allowed and all(abs(costs[taken] - costs[0]) <= abs(costs[i] - costs[0]) for i in allowed)


@pytest.mark.parametrize("value", [4.0, 7.5])  # targets at which the checker's samples reach masked levels
def test_the_checker_passes_at_tight_targets_and_unmasked_episodes_meet_them(value):
    env = make_env(Target("speedup", value))
    env.action_space.seed(0)
    check_env(env, skip_render_check=True)  # steps with unmasked samples of the action space
    rng = np.random.default_rng(0)
    for _ in range(20):
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(int(rng.integers(len(MENU))))
        assert env.is_valid_plan(info["levels"])


def test_reward_is_the_plan_score_at_the_end_only():
    seen = []
    env = make_env(Target("speedup", 1.5), num_layers=3, score=lambda levels: seen.append(levels) or 7.0)
    env.reset()
    rewards = [env.step(int(np.flatnonzero(env.action_masks())[-1]))[1] for _ in range(3)]
    assert rewards == [0.0, 0.0, 7.0] and len(seen) == 1 and len(seen[0]) == 3


def test_unreachable_target_is_a_user_error():
    with pytest.raises(UserError, match="cannot be met"):
        make_env(Target("speedup", 1000.0))
    with pytest.raises(UserError, match="must be >= 1"):
        make_env(Target("speedup", 0.5))


def test_a_target_against_dense_int8_budgets_the_dense_int8_cost_over_its_value():
    table = synthetic_table()
    int8 = MENU.index(DENSE_INT8_LEVEL)
    env = make_env(Target("int8-speedup", 1.5))
    assert env.budget == pytest.approx(table.total([int8] * table.num_layers) / 1.5)
    assert Target("int8-speedup", 1.5).label == "1.5x int8"
    with pytest.raises(UserError, match="--target-int8-speedup must be >= 1"):
        make_env(Target("int8-speedup", 0.9))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_layers=st.integers(2, 8))
def test_shaped_rewards_add_up_to_the_true_reward(seed, num_layers):
    """Potential-based shaping: an episode's shaped rewards sum to its plan's reward minus
    the same constant for every plan, so shaping cannot change which plan is best."""
    def true_reward(levels):
        return -float(np.mean(levels)) / 7.0

    env = make_env(Target("speedup", 1.5), num_layers, score=true_reward)
    env.shaped = True
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        _, reward, done, _, info = env.step(int(rng.choice(np.flatnonzero(info["action_mask"]))))
        total += reward
    assert total == pytest.approx(true_reward(info["levels"]) - env.estimated_reward([]), abs=1e-9)


def test_the_estimate_adds_the_loss_every_plan_shares():
    """A causal LM's plans all carry an int8 head: its loss is part of every estimate, so
    plans whose layers lose less than the shaping floor are still told apart."""
    env = make_env(Target("speedup", 1.0))
    env.sensitivity[:] = 1e-4
    env.sensitivity[:, 0] = 0.0
    env.shared_loss = 2e-3
    # losses add up as KLs; the reward is of the quality lost that their sum means
    assert env.estimated_reward([0] * 6) == pytest.approx(-np.log(-np.expm1(-2e-3)))
    assert env.estimated_reward([1] + [0] * 5) == pytest.approx(-np.log(-np.expm1(-2.1e-3)))


def test_the_estimate_adds_what_each_pair_of_dropped_layers_loses_beyond_their_own_drops():
    drop = next(i for i, level in enumerate(MENU) if level.drop)
    interaction = np.zeros((6, 6))
    interaction[1, 2] = interaction[2, 1] = 0.05
    interaction[2, 4] = interaction[4, 2] = -0.02
    env = CompressionEnv(synthetic_table(6), MENU, Target("speedup", 1.0), one_by_one(lambda levels: 0.0),
                         np.zeros((6, 2)), np.random.default_rng(1).random((6, len(MENU))), drop_interaction=interaction)

    def one_off(plan):
        return sum(float(env.sensitivity[layer, level]) for layer, level in enumerate(plan))

    three = [0, drop, drop, 0, drop, 0]
    assert env.estimated_loss(three) == pytest.approx(one_off(three) + 0.05 - 0.02)
    alone = [0, drop, 0, 0, 0, 1]
    assert env.estimated_loss(alone) == pytest.approx(one_off(alone))
    assert env.estimated_loss([0, drop, drop]) == pytest.approx(one_off([0, drop, drop]) + 0.05)  # a partial plan


def test_a_target_set_env_takes_its_targets_in_turn_and_shows_each_budget():
    targets = [Target("speedup", 1.5), Target("speedup", 3.0)]
    env = make_env(targets)
    shares = [budget / env.cost.dense_total for budget in budgets(env.cost, MENU, targets)]
    seen = [env.reset()[0][2] for _ in range(4)]
    assert seen == pytest.approx(shares * 2)
    observation, _ = env.reset(options={"target": 1})
    assert env.target == targets[1] and observation[2] == pytest.approx(shares[1])
    int8 = [level.name for level in MENU].index("h100-f100-int8")
    assert env.is_valid_plan([int8] * 6, 0) and not env.is_valid_plan([int8] * 6, 1)  # about 2.2x


def test_a_target_set_env_refuses_a_target_it_cannot_meet():
    with pytest.raises(UserError, match="cannot be met"):
        make_env([Target("speedup", 2.0), Target("speedup", 500.0)])
