"""PPO's rehearsal on the free estimate lasts while its greedy plan improves, within bounds."""

from __future__ import annotations

import numpy as np
import pytest

from ppocompress.search import ppo_search
from ppocompress.search.env import CompressionEnv, Target
from ppocompress.search.plan import Plan
from ppocompress.search.reward import one_by_one
from test_search_env import MENU, synthetic_table

NUM_LAYERS = 6
COMPRESSED = 1  # the level the stand-in agent compresses layers to


class ImprovingAgent:
    """Stands in for PPO: its greedy plan compresses one layer fewer after each learn()
    call, from every layer down to none."""

    class config:
        n_steps = NUM_LAYERS * ppo_search.EPISODES_PER_UPDATE

    def __init__(self):
        self.calls = 0

    def learn(self, steps: int) -> None:
        assert steps % self.config.n_steps == 0  # whole updates: split rehearsals train as one would
        self.calls += 1

    def predict(self, observation, deterministic: bool, action_mask) -> int:
        layer = round(float(observation[0]) * NUM_LAYERS)
        return COMPRESSED if layer < NUM_LAYERS - self.calls else 0


def env() -> CompressionEnv:
    """Every layer loses 0.1 at every compressed level, so each layer the agent stops
    compressing raises the estimate by more than REHEARSAL_MIN_GAIN."""
    sensitivity = np.full((NUM_LAYERS, len(MENU)), 0.1)
    sensitivity[:, 0] = 0.0
    made = CompressionEnv(synthetic_table(NUM_LAYERS), MENU, Target("speedup", 1.0), None, np.zeros((NUM_LAYERS, 2)),
                          sensitivity, shaped=True)
    made.score_plans = one_by_one(made.estimated_reward)
    return made


@pytest.fixture
def short(monkeypatch):
    """The least rehearsal is 3 looks of one update each."""
    monkeypatch.setattr(ppo_search, "REHEARSAL_EPISODES", 3 * ppo_search.EPISODES_PER_UPDATE)


def test_rehearsal_goes_on_while_the_greedy_plan_improves(short):
    agent = ImprovingAgent()
    ppo_search._rehearse(agent, env())
    # Looks 1-6 each stop compressing a layer; look 7 is the first to add nothing.
    assert agent.calls == NUM_LAYERS + 1


def test_rehearsal_lasts_at_least_its_least(short):
    class Stuck(ImprovingAgent):
        def predict(self, observation, deterministic, action_mask):
            return COMPRESSED

    agent = Stuck()
    ppo_search._rehearse(agent, env())
    assert agent.calls == ppo_search.REHEARSAL_LOOKS


def test_rehearsal_stops_at_its_most(short, monkeypatch):
    monkeypatch.setattr(ppo_search, "REHEARSAL_MAX_EPISODES", 4 * ppo_search.EPISODES_PER_UPDATE)
    agent = ImprovingAgent()
    ppo_search._rehearse(agent, env())
    assert agent.calls == 4


def test_the_greedy_plan_is_the_agents_most_likely_choices():
    agent = ImprovingAgent()
    agent.calls = 2
    assert ppo_search._greedy_plan(agent, env()) == Plan.of([COMPRESSED] * (NUM_LAYERS - 2) + [0, 0])
