"""Scoring a trained agent on whole episodes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from ppocompress.rl.config import EVALUATION_EPISODES
from ppocompress.rl.envs import check_env_id

EVALUATION_SEED_OFFSET = 1_000_000  # evaluation episodes are seeded apart from the training run's


def evaluate(agent, env: str | gym.Env, episodes: int = EVALUATION_EPISODES, deterministic: bool = True,
             seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of the undiscounted return over `episodes` episodes.

    Honors invalid-action masks the same way training does (info["action_mask"] or an
    action_masks() method), so a masked agent is scored on legal play only.
    """
    if isinstance(env, str):
        check_env_id(env)
        env = gym.make(env)
    returns = []
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            action = agent.predict(obs, deterministic=deterministic, action_mask=_action_mask(env, info))
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def _action_mask(env: gym.Env, info: dict):
    if "action_mask" in info:
        return info["action_mask"]
    try:
        return env.get_wrapper_attr("action_masks")()
    except AttributeError:
        return None
