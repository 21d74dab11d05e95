"""Action distributions written directly on tensors.

torch.distributions validates arguments and builds objects on every call; at PPO's
tiny batch sizes that overhead dominates, so these are plain functions of logits or
means. Invalid-action masks set logits to the most negative float, which gives the
action probability exactly 0 while keeping log-probabilities and entropy finite.
"""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2.0 * math.pi)


class MultiCategorical:
    """Independent categoricals, one per action dimension (Discrete is the k=1 case)."""

    def __init__(self, logits: torch.Tensor, nvec: list[int], mask: torch.Tensor | None = None):
        if mask is not None:
            logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        self.nvec = nvec
        parts = torch.split(logits, nvec, dim=-1) if len(nvec) > 1 else [logits]  # Discrete: no split
        self.log_probs = [torch.log_softmax(part, dim=-1) for part in parts]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Gumbel-max: argmax(log p + G), G = -log(-log U), is an exact draw from p, in four
        kernels, cheaper than torch.multinomial's per-call setup. A masked
        action's log-probability is near the most negative float, so no noise lifts it."""
        picks = []
        for logp in self.log_probs:
            gumbel_log = torch.rand(logp.shape, generator=generator).log_().neg_().log_()  # = -G
            picks.append((logp - gumbel_log).argmax(dim=-1, keepdim=True))
        return torch.cat(picks, dim=-1)

    def mode(self) -> torch.Tensor:
        return torch.stack([logp.argmax(dim=-1) for logp in self.log_probs], dim=-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """actions: (batch, k) integer tensor."""
        picked = [logp.gather(-1, actions[:, i : i + 1].long()).squeeze(-1) for i, logp in enumerate(self.log_probs)]
        return sum(picked[1:], picked[0])

    def entropy(self) -> torch.Tensor:
        # Masked entries have probability exactly 0, so they add exactly 0 here.
        return sum(-(logp.exp() * logp).sum(dim=-1) for logp in self.log_probs)


class DiagGaussian:
    """Gaussian with a state-independent log standard deviation per action dimension."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator)
        return self.mean + self.log_std.exp() * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - self.mean) * torch.exp(-self.log_std)
        return (-0.5 * z.pow(2) - self.log_std - 0.5 * _LOG_2PI).sum(dim=-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + 0.5 * _LOG_2PI + self.log_std).sum(dim=-1)
