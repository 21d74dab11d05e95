"""Searchers share one evaluation budget, always return plans within budget, and PPO learns."""

from __future__ import annotations

import numpy as np
import pytest
from test_search_env import MENU, make_env

from ppocompress.errors import UserError
from ppocompress.search.env import Target
from ppocompress.search.searchers import SEARCHERS, run_searcher

NUM_LAYERS = 6
# A separable synthetic quality: each (layer, level) loses a fixed amount; later layers are
# cheap to compress, early ones expensive, so the best plan is far from uniform.
LOSS = np.random.default_rng(7).random((NUM_LAYERS, len(MENU))) * np.linspace(2.0, 0.2, NUM_LAYERS)[:, None]
LOSS[:, 0] = 0.0  # dense loses nothing


def score(levels: list[int]) -> float:
    return -float(sum(LOSS[i, level] for i, level in enumerate(levels)))


def factory(target: Target):
    return lambda scorer: make_env(target, NUM_LAYERS, score=scorer)


@pytest.mark.parametrize("name", SEARCHERS)
def test_each_searcher_stays_within_budget_and_evaluations(name):
    target = Target("speedup", 2.0)
    result = run_searcher(name, factory(target), score, evaluations=60, seed=0)
    env = factory(target)(score)
    assert result.evaluations <= 60
    assert env.cost.total(result.best_levels) <= env.budget * (1 + 1e-9)
    assert result.best_reward == pytest.approx(score(result.best_levels))
    assert [n for n, _ in result.curve] == list(range(1, result.evaluations + 1))
    assert all(b2 >= b1 for (_, b1), (_, b2) in zip(result.curve, result.curve[1:]))  # best-so-far never drops


def test_search_is_reproducible_with_a_seed():
    target = Target("speedup", 2.0)
    a = run_searcher("ppo", factory(target), score, evaluations=40, seed=3)
    b = run_searcher("ppo", factory(target), score, evaluations=40, seed=3)
    assert a.best_levels == b.best_levels and a.curve == b.curve


def test_ppo_beats_uniform_on_a_non_uniform_problem():
    target = Target("speedup", 2.0)
    ppo = run_searcher("ppo", factory(target), score, evaluations=300, seed=0)
    uniform = run_searcher("uniform", factory(target), score, evaluations=300, seed=0)
    assert ppo.best_reward > uniform.best_reward


def test_unknown_searcher_is_a_user_error():
    with pytest.raises(UserError, match="unknown searcher"):
        run_searcher("annealing", factory(Target("speedup", 2.0)), score, evaluations=10, seed=0)
