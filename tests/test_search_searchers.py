"""Searchers make at most their evaluations, always return plans within the cost budget, and PPO learns."""

from __future__ import annotations

import numpy as np
import pytest

from ppocompress.errors import UserError
from ppocompress.search import baselines, on_estimate, ppo_search
from ppocompress.search.env import CompressionEnv, Target
from ppocompress.search.plan import Plan
from ppocompress.search.policy import load_policy, save_policy, scored_plans
from ppocompress.search.recorder import Evaluation, SearchResult
from ppocompress.search.reward import one_by_one
from ppocompress.search.searchers import SEARCHERS, Searcher, get_searcher, policy_searchers, run_searcher
from test_search_env import MENU, synthetic_table

NUM_LAYERS = 6
# A separable synthetic quality: each (layer, level) loses a fixed amount; later layers are
# cheap to compress, early ones expensive, so the best plan is far from uniform.
LOSS = np.random.default_rng(7).random((NUM_LAYERS, len(MENU))) * np.linspace(2.0, 0.2, NUM_LAYERS)[:, None]
LOSS[:, 0] = 0.0  # dense loses nothing


def score(plan: Plan) -> float:
    return -float(sum(LOSS[i, level] for i, level in enumerate(plan)))


def factory(target: Target | list[Target]):
    """Envs whose one-off sensitivities are the synthetic losses, as the job measures them."""
    return lambda scorer: CompressionEnv(synthetic_table(NUM_LAYERS), MENU, target, scorer,
                                         np.zeros((NUM_LAYERS, 2)), LOSS / LOSS.sum())


@pytest.fixture
def short_rehearsal(monkeypatch):
    monkeypatch.setattr(ppo_search, "REHEARSAL_EPISODES", 200)


@pytest.mark.parametrize("name", SEARCHERS)
def test_each_searcher_stays_within_its_cost_budget_and_evaluations(name, short_rehearsal):
    target = Target("speedup", 2.0)
    result = run_searcher(name, factory(target), one_by_one(score), max_evaluations=60, seed=0)
    env = factory(target)(one_by_one(score))
    assert result.evaluations <= 60
    assert env.cost.total(result.best_plan) <= env.budget * (1 + 1e-9)
    assert result.best_reward == pytest.approx(score(result.best_plan))
    assert [n for n, _ in result.curve] == list(range(1, result.evaluations + 1))
    assert all(b2 >= b1 for (_, b1), (_, b2) in zip(result.curve, result.curve[1:]))  # best-so-far never drops


def test_search_is_reproducible_with_a_seed(short_rehearsal):
    target = Target("speedup", 2.0)
    a = run_searcher("ppo", factory(target), one_by_one(score), max_evaluations=40, seed=3)
    b = run_searcher("ppo", factory(target), one_by_one(score), max_evaluations=40, seed=3)
    assert a.best_plan == b.best_plan and a.curve == b.curve


def test_ppo_beats_uniform_on_a_non_uniform_problem(short_rehearsal):
    target = Target("speedup", 2.0)
    ppo = run_searcher("ppo", factory(target), one_by_one(score), max_evaluations=300, seed=0)
    uniform = run_searcher("uniform", factory(target), one_by_one(score), max_evaluations=300, seed=0)
    assert ppo.best_reward > uniform.best_reward


def test_ppo_rehearsal_spends_no_evaluations(short_rehearsal):
    calls = []

    def counted(plan):
        calls.append(plan)
        return score(plan)

    result = run_searcher("ppo", factory(Target("speedup", 2.0)), one_by_one(counted), max_evaluations=5, seed=0)
    assert len(calls) == result.evaluations == 5


def test_ppo_spends_its_whole_budget_by_restarting_converged_agents(short_rehearsal):
    result = run_searcher("ppo", factory(Target("speedup", 2.0)), one_by_one(score), max_evaluations=80, seed=0)
    assert result.evaluations == 80


def test_evolutionary_starts_from_the_best_uniform_plan():
    target = Target("speedup", 2.0)
    uniform = run_searcher("uniform", factory(target), one_by_one(score), max_evaluations=300, seed=0)
    evolutionary = run_searcher("evolutionary", factory(target), one_by_one(score), max_evaluations=300, seed=0)
    assert uniform.best_plan in [e.plan for e in evolutionary.evaluated]
    assert evolutionary.best_reward >= uniform.best_reward


def test_the_estimate_searcher_scores_one_plan_the_added_up_losses_rank_first():
    target = Target("speedup", 2.0)
    estimate = run_searcher("estimate", factory(target), one_by_one(score), max_evaluations=300, seed=0)
    uniform = run_searcher("uniform", factory(target), one_by_one(score), max_evaluations=300, seed=0)
    assert estimate.evaluations == 1
    # The synthetic quality is the estimate's own sum, so the estimate's optimum beats every uniform plan.
    assert estimate.best_reward > uniform.best_reward


def test_unknown_searcher_is_a_user_error():
    with pytest.raises(UserError, match="unknown searcher"):
        run_searcher("annealing", factory(Target("speedup", 2.0)), one_by_one(score), max_evaluations=10, seed=0)


def evaluations(*triples) -> list[Evaluation]:
    return [Evaluation(Plan.of(levels), reward, speedup) for levels, reward, speedup in triples]


def test_meeting_sees_only_the_plans_that_meet_a_target():
    result = SearchResult("x", Plan.of([1]), 3.0, 3, [(1, 1.0), (2, 3.0), (3, 3.0)],
                          evaluations(([0], 1.0, 1.0), ([1], 3.0, 2.0), ([2], 2.0, 3.0)))
    seen = result.meeting(lambda plan: plan != Plan.of([1]))
    assert seen.best_plan == Plan.of([2]) and seen.best_reward == 2.0 and seen.evaluations == 3
    assert seen.curve == [(1, 1.0), (2, 1.0), (3, 2.0)]
    assert [e.plan for e in seen.evaluated] == [Plan.of([0]), Plan.of([2])]
    with pytest.raises(UserError, match="no plan meeting"):
        result.meeting(lambda plan: False)


def test_one_ppo_run_serves_every_target_of_a_target_set(short_rehearsal):
    targets = [Target("speedup", value) for value in (1.5, 2.0, 3.0)]
    result = run_searcher("ppo", factory(targets), one_by_one(score), max_evaluations=60, seed=0)
    env = factory(targets)(one_by_one(score))
    bests = []
    for index in range(len(targets)):
        seen = result.meeting(lambda plan, index=index: env.is_valid_plan(plan, index))
        assert env.is_valid_plan(seen.best_plan, index) and seen.best_reward == pytest.approx(score(seen.best_plan))
        bests.append(seen.best_reward)
    assert bests == sorted(bests, reverse=True)  # a plan meeting 3x meets 2x: looser targets do at least as well
    assert result.evaluations <= 60 and result.policy is not None


def test_a_saved_policy_starts_a_run_with_its_own_plan_on_a_new_target_and_a_deeper_model(short_rehearsal, tmp_path):
    trained = run_searcher("ppo", factory(Target("speedup", 2.0)), one_by_one(score), max_evaluations=60, seed=0)
    save_policy(trained.policy, tmp_path / "policy", MENU, {}, "scorer")
    new_target = Target("speedup", 2.5)
    expected = ppo_search._estimated_best_plan(load_policy(tmp_path / "policy", MENU), factory(new_target)(one_by_one(score)), 0)
    zero_shot = run_searcher("ppo", factory(new_target), one_by_one(score), max_evaluations=1, seed=0,
                             policy=load_policy(tmp_path / "policy", MENU))
    assert zero_shot.best_plan == expected and zero_shot.evaluations == 1
    deeper = lambda scorer: CompressionEnv(synthetic_table(12), MENU, new_target, scorer, np.zeros((12, 2)),  # noqa: E731
                                           np.random.default_rng(3).random((12, len(MENU))))
    plan = run_searcher("ppo", deeper, one_by_one(lambda plan: -float(np.mean(plan))), max_evaluations=1, seed=0,
                        policy=load_policy(tmp_path / "policy", MENU)).best_plan
    assert len(plan) == 12 and deeper(None).is_valid_plan(plan)


def test_the_estimated_best_plan_improves_on_the_policys_greedy_plan_for_a_looser_target(short_rehearsal):
    trained = run_searcher("ppo", factory(Target("speedup", 3.0)), one_by_one(score), max_evaluations=60, seed=0)
    looser = factory(Target("speedup", 2.0))(one_by_one(score))
    greedy = ppo_search._greedy_plan(trained.policy, looser)
    plan = ppo_search._estimated_best_plan(trained.policy, looser, 0)
    assert looser.is_valid_plan(plan)
    assert estimated_loss(looser, plan) < estimated_loss(looser, greedy)  # the 3x policy overshot 2x


def estimated_loss(env: CompressionEnv, plan: Plan) -> float:
    """What the estimate search lowers (the estimated reward is its -log, floored)."""
    return env.estimated_loss(plan)


def with_drop_pairs(seed: int):
    """factory's envs with cheap drops whose pairs interact (random extras, either sign)."""
    drop = next(i for i, level in enumerate(MENU) if level.drop)
    sensitivity = LOSS / LOSS.sum()
    sensitivity[:, drop] *= 0.1
    extra = np.random.default_rng(seed).uniform(-0.5, 1.0, (NUM_LAYERS, NUM_LAYERS)) * sensitivity[:, drop].mean()
    extra = np.triu(extra, 1) + np.triu(extra, 1).T
    return lambda scorer: CompressionEnv(synthetic_table(NUM_LAYERS), MENU, Target("speedup", 2.5), scorer,
                                         np.zeros((NUM_LAYERS, 2)), sensitivity, drop_interaction=extra)


def moved(plan: Plan, *moves: tuple[int, int]) -> Plan:
    return plan.with_levels(dict(moves))


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_the_estimate_search_keeps_the_target_and_leaves_no_one_or_two_layer_change_that_helps(seed, pairs):
    env = (with_drop_pairs(seed) if pairs else factory(Target("speedup", 1.8)))(one_by_one(score))
    rng = np.random.default_rng(seed)
    start = next(plan for plan in (Plan.of(rng.integers(0, len(MENU), NUM_LAYERS)) for _ in range(10_000))
                 if env.is_valid_plan(plan) and env.cost.total(plan) < 0.8 * env.budget)
    plan = on_estimate.improve_on_estimate(env, start, 0)
    assert env.is_valid_plan(plan) and estimated_loss(env, plan) < estimated_loss(env, start)
    changes = [(layer, level) for layer in range(NUM_LAYERS) for level in range(len(MENU))]
    neighbours = [moved(plan, a) for a in changes] + [moved(plan, a, b) for a in changes for b in changes if a[0] < b[0]]
    best = min(estimated_loss(env, n) for n in neighbours if env.is_valid_plan(n))
    assert best >= estimated_loss(env, plan) - 1e-9


def test_the_estimate_search_improves_a_plan_that_no_single_layer_change_improves():
    env = factory(Target("speedup", 1.8))(one_by_one(score))
    changes = [(layer, level) for layer in range(NUM_LAYERS) for level in range(len(MENU))]

    def single_changes_help(plan):
        return any(env.is_valid_plan(n) and estimated_loss(env, n) < estimated_loss(env, plan) - 1e-9
                   for n in (moved(plan, change) for change in changes))

    rng = np.random.default_rng(0)
    tight = (plan for plan in (Plan.of(rng.integers(0, len(MENU), NUM_LAYERS)) for _ in range(200_000))
             if env.is_valid_plan(plan) and env.cost.total(plan) > 0.95 * env.budget)
    while True:  # a single-change optimum reached from a random tight plan, that pairs still improve
        singles_only = next(tight)
        while single_changes_help(singles_only):
            singles_only = max((moved(singles_only, c) for c in changes if env.is_valid_plan(moved(singles_only, c))),
                               key=lambda n: -estimated_loss(env, n))
        if on_estimate.improve_on_estimate(env, singles_only, 0) != singles_only:
            break
    plan = on_estimate.improve_on_estimate(env, singles_only, 0)
    assert not single_changes_help(singles_only)
    assert env.is_valid_plan(plan) and estimated_loss(env, plan) < estimated_loss(env, singles_only)


def test_a_policy_acts_only_on_its_own_menu(short_rehearsal, tmp_path):
    trained = run_searcher("ppo", factory(Target("speedup", 2.0)), one_by_one(score), max_evaluations=20, seed=0)
    save_policy(trained.policy, tmp_path / "policy", MENU, {}, "scorer")
    with pytest.raises(UserError, match="menu"):
        load_policy(tmp_path / "policy", MENU[:-1])
    with pytest.raises(UserError, match="no search policy"):
        load_policy(tmp_path, MENU)
    with pytest.raises(UserError, match="starts the ppo searcher"):
        run_searcher("random", factory(Target("speedup", 2.0)), one_by_one(score), max_evaluations=5, seed=0,
                     policy=trained.policy)


def test_uniform_drops_the_least_sensitive_layers_when_no_level_kept_everywhere_meets_the_target():
    target = Target("speedup", 6.0)  # the cheapest level kept in all six layers reaches 5.26x
    env = factory(target)(one_by_one(score))
    drop = len(MENU) - 1
    assert not any(env.is_valid_plan([level] * NUM_LAYERS) for level in range(drop))
    plans = baselines.uniform_plans(env)
    assert plans and all(env.is_valid_plan(plan) for plan in plans)
    for plan in plans:
        kept = {level for level in plan if level != drop}
        assert len(kept) == 1
        dropped = [layer for layer, level in enumerate(plan) if level == drop]
        assert dropped == sorted(np.argsort(LOSS[:, drop], kind="stable")[:len(dropped)].tolist())
        fewer = plan.with_levels({dropped[-1]: kept.pop()})
        assert not env.is_valid_plan(fewer)  # one drop fewer misses the target
    result = run_searcher("uniform", factory(target), one_by_one(score), max_evaluations=300, seed=0)
    assert result.best_plan in plans
    evolutionary = run_searcher("evolutionary", factory(target), one_by_one(score), max_evaluations=300, seed=0)
    assert result.best_plan in [e.plan for e in evolutionary.evaluated]


def test_a_policy_carries_its_scored_plans_only_to_a_run_that_scores_them_the_same_way(short_rehearsal, tmp_path):
    trained = run_searcher("ppo", factory(Target("speedup", 2.0)), one_by_one(score), max_evaluations=20, seed=0)
    rewards = {e.plan: e.reward for e in trained.evaluated}
    save_policy(trained.policy, tmp_path / "policy", MENU, rewards, "scorer-a")
    assert scored_plans(tmp_path / "policy", "scorer-a") == rewards
    assert scored_plans(tmp_path / "policy", "scorer-b") is None  # another model, text or runtime
    assert scored_plans(tmp_path, "scorer-a") is None  # no plans saved


def test_plans_known_before_a_run_count_for_the_targets_they_meet_and_cost_nothing():
    run = SearchResult("ppo", Plan.of([1, 1]), 0.5, evaluations=2, curve=[(1, 0.2), (2, 0.5)],
                       evaluated=evaluations(([0, 0], 0.2, 1.0), ([1, 1], 0.5, 2.0)))
    known = evaluations(([2, 2], 0.9, 3.0), ([3, 3], 0.95, 1.5), ([1, 1], 0.5, 2.0))
    fast = run.meeting(lambda plan: plan[0] >= 1, known)
    assert fast.best_plan == Plan.of([3, 3]) and fast.best_reward == 0.95 and fast.evaluations == 2
    # a plan the run scored again is counted once
    assert [e.plan for e in fast.evaluated] == [Plan.of([2, 2]), Plan.of([3, 3]), Plan.of([1, 1])]
    assert fast.curve == [(1, 0.95), (2, 0.95)]
    assert run.meeting(lambda plan: plan[0] <= 1, known).best_plan == Plan.of([1, 1])


def test_a_target_set_run_first_scores_the_estimates_best_plan_for_its_first_target(short_rehearsal):
    """A target set's policy generalises across its targets; the dense model, which the loosest
    target allows and the estimate ranks first there, is scored first whatever the policy
    proposes."""
    targets = [Target("speedup", value) for value in (1.0, 2.0)]
    result = run_searcher("ppo", factory(targets), one_by_one(score), max_evaluations=30, seed=0)
    assert result.evaluated[0].plan == Plan.uniform(0, NUM_LAYERS)


def test_the_registry_names_each_searcher_with_how_it_runs_and_what_it_keeps():
    # the delivered one first, then the baselines
    assert list(SEARCHERS) == ["ppo", "uniform", "random", "evolutionary", "estimate"]
    assert all(name == searcher.name and callable(searcher.run) for name, searcher in SEARCHERS.items())
    assert [name for name, s in SEARCHERS.items() if s.whole_target_set] == ["ppo"] == policy_searchers()
    assert {name: s.most_per_target(37) for name, s in SEARCHERS.items() if s.most_per_target} == {"uniform": 37, "estimate": 1}
    assert get_searcher("random") is SEARCHERS["random"]
    with pytest.raises(UserError, match="unknown searcher 'annealing'; use one of ppo, uniform, random, evolutionary"):
        get_searcher("annealing")


def test_run_searcher_runs_the_registered_entry(monkeypatch):
    ran = []

    def stand_in(run):
        ran.append(run.seed)
        run.recorder([Plan.uniform(0, NUM_LAYERS)])

    monkeypatch.setitem(SEARCHERS, "uniform", Searcher("uniform", stand_in, whole_target_set=False, policy=False))
    result = run_searcher("uniform", factory(Target("speedup", 1.0)), one_by_one(score), max_evaluations=5, seed=7)
    assert ran == [7] and result.best_plan == Plan.uniform(0, NUM_LAYERS) and result.evaluations == 1


class _HighFidelity:
    """A scorer whose larger calibration subset says how good plans really are, and
    records which plans it was asked about."""

    def __init__(self, quality: dict[Plan, float]):
        self.quality, self.asked = quality, []

    def qualities(self, plans: list[Plan], fidelity: str):
        assert fidelity == "high"
        self.asked += plans
        return [self.quality[plan] for plan in plans]


def test_the_finalists_include_the_plan_the_estimate_ranks_first_and_the_larger_subset_decides():
    from ppocompress.search.searching import FINALISTS, best_at_high_fidelity

    plans = [Plan.uniform(level, NUM_LAYERS) for level in range(FINALISTS + 2)]
    # the search's few passages ranked plans[0..FINALISTS-1] first (lucky); the estimate
    # ranks plans[-1] first, and the larger subset agrees with the estimate
    rewards = [10.0 - index for index in range(len(plans) - 1)] + [0.0]
    result = SearchResult("ppo", plans[0], rewards[0], len(plans), [], [Evaluation(p, r, 1.0) for p, r in zip(plans, rewards)])
    estimate = {plan: (0.0 if plan == plans[-1] else 1.0 + index) for index, plan in enumerate(plans)}
    scorer = _HighFidelity({plan: (0.9 if plan == plans[-1] else 0.5) for plan in plans})
    assert best_at_high_fidelity(scorer, result, estimate.__getitem__) == (plans[-1], 0.9)
    assert scorer.asked == plans[:FINALISTS] + [plans[-1]]  # the plans ranked in between are not re-scored

    scorer = _HighFidelity({plan: (0.9 if plan == plans[1] else 0.5) for plan in plans})
    assert best_at_high_fidelity(scorer, result, estimate.__getitem__) == (plans[1], 0.9)


def test_a_plan_both_rankings_put_first_is_re_scored_once():
    from ppocompress.search.searching import FINALISTS, best_at_high_fidelity

    plans = [Plan.uniform(level, NUM_LAYERS) for level in range(FINALISTS + 1)]
    result = SearchResult("ppo", plans[0], 1.0, len(plans), [],
                          [Evaluation(p, -float(index), 1.0) for index, p in enumerate(plans)])
    scorer = _HighFidelity(dict.fromkeys(plans, 0.5))
    assert best_at_high_fidelity(scorer, result, lambda plan: float(plans.index(plan))) == (plans[0], 0.5)
    assert scorer.asked == plans[:FINALISTS]
