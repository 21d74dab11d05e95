"""Running statistics for observation normalisation and reward scaling.

Both live inside what PPO saves, so a loaded agent sees inputs scaled exactly as
during training.
"""

from __future__ import annotations

import torch
from torch import nn

VARIANCE_EPS = 1e-8  # added to a variance before its square root, so that a constant input divides by ~1e-4, not 0


class RunningMeanStd(nn.Module):
    """Mean and variance over everything seen so far (Chan et al.'s parallel update)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def update(self, batch: torch.Tensor) -> None:
        batch = batch.double()
        batch_mean = batch.mean(dim=0)
        batch_var = batch.var(dim=0, unbiased=False)
        batch_count = batch.shape[0]
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean += delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta.pow(2) * self.count * batch_count / total
        self.var.copy_(m2 / total)
        self.count.fill_(total.item())

    def std(self) -> torch.Tensor:
        """The standard deviation, in float32, never 0."""
        return torch.sqrt(self.var.float() + VARIANCE_EPS)


class ObservationNormalizer(RunningMeanStd):
    """(obs - mean) / std, clipped; statistics are updated only while collecting rollouts."""

    def __init__(self, dim: int, clip: float):
        super().__init__((dim,))
        self.clip = clip

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        scaled = (obs - self.mean.float()) / self.std()
        return scaled.clamp(-self.clip, self.clip)


class RewardScaler(RunningMeanStd):
    """Divides rewards by the running std of the discounted return, as VecNormalize does.

    It only rescales (no mean shift), which keeps the sign of rewards and the optimal policy.
    """

    def __init__(self, n_envs: int, gamma: float, clip: float):
        super().__init__(())
        self.gamma = gamma
        self.clip = clip
        self.register_buffer("discounted_return", torch.zeros(n_envs, dtype=torch.float64))

    def start_episodes(self, n_envs: int) -> None:
        """Forget the running returns (for a fresh set of envs), keep the variance estimate."""
        self.discounted_return = torch.zeros(n_envs, dtype=torch.float64)

    def scale(self, rewards: torch.Tensor, episode_ended: torch.Tensor) -> torch.Tensor:
        self.discounted_return.mul_(self.gamma).add_(rewards.double())
        self.update(self.discounted_return)
        self.discounted_return[episode_ended] = 0.0
        return (rewards / self.std()).clamp(-self.clip, self.clip)
