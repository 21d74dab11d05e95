"""Searchers share one evaluation budget, always return plans within budget, and PPO learns."""

from __future__ import annotations

import numpy as np
import pytest
from test_search_env import MENU, synthetic_table

from ppocompress.errors import UserError
from ppocompress.search import searchers
from ppocompress.search.env import CompressionEnv, Target
from ppocompress.search.searchers import SEARCHERS, run_searcher

NUM_LAYERS = 6
# A separable synthetic quality: each (layer, level) loses a fixed amount; later layers are
# cheap to compress, early ones expensive, so the best plan is far from uniform.
LOSS = np.random.default_rng(7).random((NUM_LAYERS, len(MENU))) * np.linspace(2.0, 0.2, NUM_LAYERS)[:, None]
LOSS[:, 0] = 0.0  # dense loses nothing


def score(levels: list[int]) -> float:
    return -float(sum(LOSS[i, level] for i, level in enumerate(levels)))


def factory(target: Target):
    """Envs whose one-off sensitivities are the synthetic losses, as the job measures them."""
    return lambda scorer: CompressionEnv(synthetic_table(NUM_LAYERS), MENU, target, scorer,
                                         np.zeros((NUM_LAYERS, 2)), LOSS / LOSS.sum())


@pytest.fixture
def short_rehearsal(monkeypatch):
    monkeypatch.setattr(searchers, "REHEARSAL_EPISODES", 200)


@pytest.mark.parametrize("name", SEARCHERS)
def test_each_searcher_stays_within_budget_and_evaluations(name, short_rehearsal):
    target = Target("speedup", 2.0)
    result = run_searcher(name, factory(target), score, evaluations=60, seed=0)
    env = factory(target)(score)
    assert result.evaluations <= 60
    assert env.cost.total(result.best_levels) <= env.budget * (1 + 1e-9)
    assert result.best_reward == pytest.approx(score(result.best_levels))
    assert [n for n, _ in result.curve] == list(range(1, result.evaluations + 1))
    assert all(b2 >= b1 for (_, b1), (_, b2) in zip(result.curve, result.curve[1:]))  # best-so-far never drops


def test_search_is_reproducible_with_a_seed(short_rehearsal):
    target = Target("speedup", 2.0)
    a = run_searcher("ppo", factory(target), score, evaluations=40, seed=3)
    b = run_searcher("ppo", factory(target), score, evaluations=40, seed=3)
    assert a.best_levels == b.best_levels and a.curve == b.curve


def test_ppo_beats_uniform_on_a_non_uniform_problem(short_rehearsal):
    target = Target("speedup", 2.0)
    ppo = run_searcher("ppo", factory(target), score, evaluations=300, seed=0)
    uniform = run_searcher("uniform", factory(target), score, evaluations=300, seed=0)
    assert ppo.best_reward > uniform.best_reward


def test_ppo_rehearsal_spends_no_evaluations(short_rehearsal):
    calls = []

    def counted(levels):
        calls.append(levels)
        return score(levels)

    result = run_searcher("ppo", factory(Target("speedup", 2.0)), counted, evaluations=5, seed=0)
    assert len(calls) == result.evaluations == 5


def test_ppo_spends_its_whole_budget_by_restarting_converged_agents(short_rehearsal):
    result = run_searcher("ppo", factory(Target("speedup", 2.0)), score, evaluations=80, seed=0)
    assert result.evaluations == 80


def test_evolutionary_starts_from_the_best_uniform_plan():
    target = Target("speedup", 2.0)
    uniform = run_searcher("uniform", factory(target), score, evaluations=300, seed=0)
    evolutionary = run_searcher("evolutionary", factory(target), score, evaluations=300, seed=0)
    assert uniform.best_levels in [levels for levels, _, _ in evolutionary.evaluated]
    assert evolutionary.best_reward >= uniform.best_reward


def test_unknown_searcher_is_a_user_error():
    with pytest.raises(UserError, match="unknown searcher"):
        run_searcher("annealing", factory(Target("speedup", 2.0)), score, evaluations=10, seed=0)
