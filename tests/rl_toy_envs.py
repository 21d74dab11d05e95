"""Tiny Gymnasium environments for the PPO library tests (ppocompress.rl).

Each env is deterministic in length and cheap to step, so a test can compute batch
sizes, returns and masks by hand. Some are registered (ids "RLToy/...") so that the
library can copy them with gym.make, which is the SAME_STEP autoreset path.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ppocompress.rl import PPOConfig


def tiny_config(**overrides) -> PPOConfig:
    """A fast configuration: small nets, short rollouts, two epochs of two minibatches."""
    settings = dict(n_envs=2, n_steps=32, batch_size=32, n_epochs=2, hidden_sizes=(16, 16))
    settings.update(overrides)
    return PPOConfig(**settings)


class CounterEnv(gym.Env):
    """obs = [steps taken in this episode]; reward 1 on every step; the episode ends after
    `length` steps, by termination if `terminate` else by truncation (a time limit)."""

    def __init__(self, length: int = 5, terminate: bool = False):
        self.length = length
        self.terminate = terminate
        self.observation_space = spaces.Box(0.0, float(length), (1,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        return np.array([self.t], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        end = self.t >= self.length
        return self._obs(), 1.0, end and self.terminate, end and not self.terminate, {}


class _RandomObsEnv(gym.Env):
    """Random observations in [-1, 1]^3; episodes truncated after `length` steps."""

    length = 10

    def __init__(self):
        self.observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.t = 0
        self.obs = np.zeros(3, dtype=np.float32)

    def _new_obs(self):
        self.obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return self.obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._new_obs(), {}

    def _advance(self, reward: float, info: dict | None = None):
        self.t += 1
        return self._new_obs(), float(reward), False, self.t >= self.length, info or {}


class DiscreteToyEnv(_RandomObsEnv):
    """Reward 1 for choosing the index of the largest of the first three obs entries."""

    def __init__(self):
        super().__init__()
        self.action_space = spaces.Discrete(3)

    def step(self, action):
        assert self.action_space.contains(np.int64(action)), action
        return self._advance(float(int(action) == int(np.argmax(self.obs))))


class MultiDiscreteToyEnv(_RandomObsEnv):
    """Two sub-actions; reward for matching the sign of obs[0] and the argmax of obs."""

    def __init__(self):
        super().__init__()
        self.action_space = spaces.MultiDiscrete([3, 2])

    def step(self, action):
        action = np.asarray(action)
        assert self.action_space.contains(action.astype(self.action_space.dtype)), action
        reward = float(action[0] == np.argmax(self.obs)) + float(action[1] == int(self.obs[0] > 0))
        return self._advance(reward)


class BoxToyEnv(_RandomObsEnv):
    """Continuous actions in [-1, 1]^2; reward -|a - obs[:2]|. Raises on an action outside
    the bounds, and records every action it receives in `received`."""

    def __init__(self):
        super().__init__()
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.received: list[np.ndarray] = []

    def step(self, action):
        action = np.asarray(action, dtype=np.float32)
        if not (np.all(action >= self.action_space.low) and np.all(action <= self.action_space.high)):
            raise AssertionError(f"action {action} outside the Box bounds")
        self.received.append(action.copy())
        return self._advance(-float(np.abs(action - self.obs[:2]).sum()))


class MaskedActionTaken(RuntimeError):
    pass


class MaskedDiscreteEnv(_RandomObsEnv):
    """Discrete(6) where each state allows only two random actions; taking any other
    raises MaskedActionTaken. The mask comes in info["action_mask"] (mask_via="info") or
    from an action_masks() method (mask_via="method")."""

    n = 6

    def __init__(self, mask_via: str = "info"):
        super().__init__()
        self.mask_via = mask_via
        self.action_space = spaces.Discrete(self.n)
        self.allowed = np.ones(self.n, dtype=bool)
        self.actions_taken: list[int] = []

    def _new_mask(self):
        self.allowed = np.zeros(self.n, dtype=bool)
        self.allowed[self.np_random.choice(self.n, size=2, replace=False)] = True

    def _info(self):
        return {"action_mask": self.allowed.copy()} if self.mask_via == "info" else {}

    def action_masks(self):
        if self.mask_via != "method":
            raise AttributeError("this env gives its mask in info")
        return self.allowed.copy()

    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed)
        self._new_mask()
        return obs, self._info()

    def step(self, action):
        action = int(action)
        if not self.allowed[action]:
            raise MaskedActionTaken(f"action {action} is masked (allowed {np.flatnonzero(self.allowed)})")
        self.actions_taken.append(action)
        reward = float(action == np.flatnonzero(self.allowed)[0])
        self._new_mask()
        return self._advance(reward, self._info())


class MaskedMethodLazyEnv(MaskedDiscreteEnv):
    """Like MaskedDiscreteEnv(mask_via="method"), but the mask exists only after reset()
    (as in most board-game envs, which build their board in reset)."""

    def __init__(self):
        super().__init__(mask_via="method")
        del self.allowed

    def action_masks(self):
        return self.allowed.copy()  # AttributeError before the first reset


class MaskedMultiDiscreteEnv(_RandomObsEnv):
    """MultiDiscrete([3, 4]) with a concatenated 7-entry mask in info["action_mask"]; each
    dimension allows a random non-empty subset; a masked sub-action raises."""

    nvec = (3, 4)

    def __init__(self):
        super().__init__()
        self.action_space = spaces.MultiDiscrete(list(self.nvec))
        self.parts = [np.ones(n, dtype=bool) for n in self.nvec]

    def _new_mask(self):
        self.parts = []
        for n in self.nvec:
            part = np.zeros(n, dtype=bool)
            part[self.np_random.choice(n, size=1 + int(self.np_random.integers(n - 1)), replace=False)] = True
            self.parts.append(part)
        return {"action_mask": np.concatenate(self.parts)}

    def reset(self, *, seed=None, options=None):
        obs, _ = super().reset(seed=seed)
        return obs, self._new_mask()

    def step(self, action):
        action = np.asarray(action)
        for i, part in enumerate(self.parts):
            if not part[int(action[i])]:
                raise MaskedActionTaken(f"sub-action {i}={int(action[i])} is masked ({part})")
        return self._advance(1.0, self._new_mask())


class NormalObsEnv(gym.Env):
    """Observations drawn from N(MEAN, STD^2) per entry, actions ignored, reward 0."""

    MEAN = np.array([3.0, -2.0], dtype=np.float32)
    STD = np.array([2.0, 0.5], dtype=np.float32)

    def __init__(self):
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        return (self.MEAN + self.STD * self.np_random.standard_normal(2)).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 0.0, False, self.t >= 20, {}


class MultiDiscreteStartEnv(_RandomObsEnv):
    """MultiDiscrete([3, 2], start=[1, -1]): valid actions are {1,2,3} x {-1,0}."""

    def __init__(self):
        super().__init__()
        self.action_space = spaces.MultiDiscrete([3, 2], start=[1, -1])

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype)), action
        return self._advance(0.0)


TOY_IDS = {
    "RLToy/Discrete-v0": DiscreteToyEnv,
    "RLToy/MultiDiscrete-v0": MultiDiscreteToyEnv,
    "RLToy/Box-v0": BoxToyEnv,
    "RLToy/CounterTruncated-v0": lambda: CounterEnv(length=5, terminate=False),
    "RLToy/CounterTerminated-v0": lambda: CounterEnv(length=5, terminate=True),
    "RLToy/MaskedInfo-v0": lambda: MaskedDiscreteEnv("info"),
    "RLToy/MaskedMethod-v0": lambda: MaskedDiscreteEnv("method"),
    "RLToy/MaskedMultiDiscrete-v0": MaskedMultiDiscreteEnv,
}

for _id, _entry in TOY_IDS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, disable_env_checker=True)
