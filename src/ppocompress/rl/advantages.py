"""Generalised Advantage Estimation (Schulman et al., 2016)."""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    episode_ended: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (= advantages + values) for tensors of shape (steps, envs).

    next_values[t] is V of the state that really followed step t: for a step that ended
    its episode by truncation (time limit) that is the final observation, so the return
    is bootstrapped from it; termination zeroes it. episode_ended (terminated or
    truncated) stops the lambda-sum from running into the next episode.
    """
    not_terminated = 1.0 - terminated.float()
    continues = 1.0 - episode_ended.float()
    deltas = rewards + gamma * next_values * not_terminated - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * gae_lambda * continues[t] * running
        advantages[t] = running
    return advantages, advantages + values
