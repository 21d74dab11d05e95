"""Rewards settled in a batch after the rollout train exactly as rewards paid at once."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode

from ppocompress.rl import PPO
from ppocompress.rl.rollout import PENDING_REWARD
from rl_toy_envs import tiny_config

LENGTH = 3


class GuessEnv(gym.Env):
    """Three Discrete(3) choices; the reward, at the end, is how many match (2, 0, 1)."""

    def __init__(self, deferred: bool):
        self.deferred = deferred
        self.observation_space = spaces.Box(0.0, 1.0, (LENGTH,), np.float32)  # the choices so far, halved; 0 for none
        self.action_space = spaces.Discrete(3)
        self.choices: list[int] = []
        self.pending: list[list[int]] = []
        self.settled_batches: list[int] = []

    def _obs(self):
        return np.array([c / 2 for c in self.choices] + [0.0] * (LENGTH - len(self.choices)), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.choices = []
        return self._obs(), {}

    @staticmethod
    def score(choices: list[int]) -> float:
        return float(sum(c == t for c, t in zip(choices, (2, 0, 1))))

    def step(self, action):
        self.choices.append(int(action))
        done = len(self.choices) == LENGTH
        info = {}
        reward = -0.1  # a step cost, known at once
        if done and self.deferred:
            info[PENDING_REWARD] = len(self.pending)
            self.pending.append(list(self.choices))
        elif done:
            reward += self.score(self.choices)
        return self._obs(), reward, done, False, info

    def settle_pending(self) -> dict[int, float]:
        plans, self.pending = self.pending, []
        self.settled_batches.append(len(plans))
        return {token: self.score(plan) for token, plan in enumerate(plans)}


@pytest.mark.parametrize("mode", [AutoresetMode.SAME_STEP, AutoresetMode.NEXT_STEP])
def test_pending_rewards_settled_after_the_rollout_train_as_rewards_paid_at_once(mode):
    agents = {}
    for deferred in (False, True):
        envs = [GuessEnv(deferred), GuessEnv(deferred)]
        vector = gym.vector.SyncVectorEnv([lambda e=e: e for e in envs], autoreset_mode=mode)
        agent = PPO(vector, tiny_config(n_steps=12, batch_size=12), seed=0)
        agent.learn(12 * 2 * 5)
        agents[deferred] = agent
        if deferred:
            assert all(env.settled_batches and max(env.settled_batches) > 1 for env in envs)  # several per rollout
            assert not any(env.pending for env in envs)
    for immediate, deferred in zip(agents[False].policy.state_dict().values(), agents[True].policy.state_dict().values()):
        assert torch.equal(immediate, deferred)
    assert agents[False]._collector.episodes == agents[True]._collector.episodes
