"""Collecting experience from a vector env into the batch a PPO update consumes.

An env whose episode-end reward is expensive (a simulation, a model to evaluate) may
leave it to be settled in a batch, which it can compute in parallel: its step returns
the part of the reward it knows and info[PENDING_REWARD] = a token (an int); once the
rollout is collected, the collector calls the env's settle_pending() -> {token: amount}
and adds each amount to its step's reward. The policy does not change within a rollout,
so the actions are those an env that paid at once would have seen.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from ppocompress.rl.advantages import compute_gae
from ppocompress.rl.envs import ActionMasks, autoreset_mode
from ppocompress.rl.normalization import RewardScaler
from ppocompress.rl.policy import ActorCritic, one_thread
from ppocompress.rl.spaces import to_env_actions

PENDING_REWARD = "pending_reward"
RECENT_EPISODES = 100  # the episodes the running return and length means are over (Stable-Baselines3's window)


@dataclass
class Batch:
    """One rollout, flattened over (step, env) and restricted to valid transitions."""

    features: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    masks: torch.Tensor | None

    def __len__(self) -> int:
        return self.features.shape[0]

    def select(self, index: torch.Tensor) -> "Batch":
        """The minibatch at these rows."""
        return Batch(**{f.name: None if (v := getattr(self, f.name)) is None else v[index] for f in fields(self)})

    @classmethod
    def from_rollout(cls, keep: torch.Tensor, **per_step: torch.Tensor | None) -> "Batch":
        """Batch fields given as (step, env, ...) tensors, flattened over (step, env); only the
        rows `keep` (flattened alike) marks are kept."""
        return cls(**{name: None if x is None else x.flatten(0, 1)[keep] for name, x in per_step.items()})


class RolloutCollector:
    """Steps the envs with the current policy and keeps the episode statistics.

    Two details matter for correctness:
    - time-limit truncation is not termination: the return is bootstrapped from the value
      of the final observation (CleanRL treats both alike, which biases values low);
    - under NEXT_STEP autoreset the step after an episode's end only resets the env (the
      action is ignored), so that transition is dropped from the batch.
    """

    def __init__(
        self,
        vec_env: VectorEnv,
        policy: ActorCritic,
        generator: torch.Generator,
        reward_scaler: RewardScaler | None,
        seed: int | None,
    ):
        self.env = vec_env
        self.policy = policy
        self.generator = generator
        self.reward_scaler = reward_scaler
        self.n_envs = vec_env.num_envs
        self.mode = autoreset_mode(vec_env)
        self.action_masks = ActionMasks(vec_env, policy.logit_sizes)
        obs, infos = vec_env.reset(seed=seed)
        vec_env.action_space.seed(seed)
        self.obs = obs
        self.masks = self.action_masks.read(infos)
        self.needs_reset_step = np.zeros(self.n_envs, dtype=bool)  # NEXT_STEP only
        self.episode_return = np.zeros(self.n_envs)
        self.episode_length = np.zeros(self.n_envs, dtype=np.int64)
        self.recent_returns: deque[float] = deque(maxlen=RECENT_EPISODES)
        self.recent_lengths: deque[int] = deque(maxlen=RECENT_EPISODES)
        self.episodes: list[tuple[int, float, int]] = []  # (global step, return, length)
        self.global_step = 0

    def collect(self, n_steps: int, gamma: float, gae_lambda: float) -> Batch:
        """n_steps in every env with the current policy, then the advantages and returns."""
        policy, n_envs = self.policy, self.n_envs
        features, actions, log_probs, values, masks = [], [], [], [], []
        rewards = np.zeros((n_steps, n_envs))
        counted = np.zeros((n_steps, n_envs), dtype=bool)  # False: a NEXT_STEP reset step, left out of the batch
        terminated = np.zeros((n_steps, n_envs), dtype=bool)
        ended = np.zeros((n_steps, n_envs), dtype=bool)  # terminated or truncated
        final_values = torch.full((n_steps, n_envs), float("nan"))  # V(final obs) of SAME_STEP truncations
        pending: list[tuple[int, int, int]] = []  # (step, env, token)

        with torch.inference_mode():
            for t in range(n_steps):
                with one_thread():
                    x = policy.features(self.obs, update_normalizer=True)
                    dist, value = policy(x, self.masks)
                    action = dist.sample(self.generator)
                features.append(x)
                actions.append(action)
                log_probs.append(dist.log_prob(action))
                values.append(value)
                masks.append(self.masks)

                obs, reward, term, truncated, infos = self.env.step(to_env_actions(self.env.single_action_space, action))
                done = np.logical_or(term, truncated)
                rewards[t], terminated[t], ended[t] = reward, term, done
                counted[t] = ~self.needs_reset_step
                if self.mode == AutoresetMode.NEXT_STEP:
                    self.needs_reset_step = done
                elif truncated.any():
                    final_values[t] = self._final_observation_values(infos, truncated)
                pending += [(t, i, token) for i, token in _pending_tokens(infos)]
                self.obs = obs
                self.masks = self.action_masks.read(infos, ignored=self.needs_reset_step)

            scaled_rewards = self._settle_and_scale(rewards, pending, ended, counted)
            values_t = torch.stack(values)
            advantages, returns = compute_gae(scaled_rewards, values_t, self._next_values(values_t, final_values),
                                              torch.from_numpy(terminated), torch.from_numpy(ended), gamma, gae_lambda)

        # Outside inference mode: the update differentiates through these tensors.
        return Batch.from_rollout(
            torch.from_numpy(counted).reshape(-1),
            features=torch.stack(features),
            actions=torch.stack(actions),
            log_probs=torch.stack(log_probs),
            values=values_t,
            advantages=advantages,
            returns=returns,
            masks=None if masks[0] is None else torch.stack(masks),
        )

    def _settle_and_scale(self, rewards: np.ndarray, pending: list[tuple[int, int, int]], ended: np.ndarray,
                          counted: np.ndarray) -> torch.Tensor:
        """The rollout's rewards with the pending ones settled (in `rewards`), counted into the
        episode statistics and scaled, step by step: both are running sums."""
        if pending:
            settled = self.env.call("settle_pending")
            for t, i, token in pending:
                rewards[t, i] += settled[i][token]
        scaled = torch.zeros(rewards.shape)
        for t in range(len(rewards)):
            self.global_step += self.n_envs
            self._track_episodes(rewards[t], ended[t], counted[t])
            reward_t = torch.as_tensor(rewards[t], dtype=torch.float32)
            scaled[t] = reward_t if self.reward_scaler is None else self.reward_scaler.scale(reward_t, torch.from_numpy(ended[t]))
        return scaled

    def _next_values(self, values: torch.Tensor, final_values: torch.Tensor) -> torch.Tensor:
        """V of the observation after each step: the next step's value, the current observation's
        for the last step. Under NEXT_STEP the obs after a truncation *is* the final obs, so the
        next step's value already is V(final); under SAME_STEP it was evaluated separately."""
        last_values = self.policy.value(self.policy.features(self.obs))
        next_values = torch.cat([values[1:], last_values[None]])
        return torch.where(final_values.isnan(), next_values, final_values)

    def _final_observation_values(self, infos: dict, truncated: np.ndarray) -> torch.Tensor:
        """V(final observation) for envs truncated in this step (SAME_STEP autoreset)."""
        out = torch.full((self.n_envs,), float("nan"))
        idx = np.flatnonzero(truncated)
        final_obs = np.stack([infos["final_obs"][i] for i in idx])
        out[torch.from_numpy(idx)] = self.policy.value(self.policy.features(final_obs))
        return out

    def _track_episodes(self, reward: np.ndarray, done: np.ndarray, counted: np.ndarray) -> None:
        self.episode_return += np.where(counted, reward, 0.0)
        self.episode_length += counted
        for i in np.flatnonzero(done & counted):
            self.recent_returns.append(float(self.episode_return[i]))
            self.recent_lengths.append(int(self.episode_length[i]))
            self.episodes.append((self.global_step, float(self.episode_return[i]), int(self.episode_length[i])))
            self.episode_return[i] = 0.0
            self.episode_length[i] = 0


def _pending_tokens(infos: dict) -> list[tuple[int, int]]:
    """(env, token) of the rewards left pending in a step: in the step's info, or, where
    the episode ended and the env was reset in the same step (SAME_STEP), in its final info."""
    found = []
    for info in (infos, infos.get("final_info", {})):
        if PENDING_REWARD in info:
            found += [(int(i), int(info[PENDING_REWARD][i])) for i in np.flatnonzero(info["_" + PENDING_REWARD])]
    return found
