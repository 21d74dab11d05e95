"""PPO's loss terms as plain functions of tensors, so each can be checked by hand."""

from __future__ import annotations

import torch


def clipped_surrogate_loss(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """-min(r A, clip(r, 1-eps, 1+eps) A), averaged: the policy gains nothing by moving the
    ratio outside [1-eps, 1+eps] in the direction the advantage favours."""
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    return -torch.min(advantages * ratio, advantages * clipped).mean()


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_range_vf: float | None
) -> torch.Tensor:
    """Squared error to the returns; with clipping, the pessimistic max of the unclipped and
    the clipped-around-the-rollout-value errors (OpenAI baselines' form)."""
    loss = (values - returns).pow(2)
    if clip_range_vf is not None:
        clipped = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
        loss = torch.max(loss, (clipped - returns).pow(2))
    return loss.mean()


def approx_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """KL(old || new) by the k3 estimator (r - 1) - log r: unbiased and never negative.

    expm1 keeps it exact for the tiny log-ratios of early minibatches, where exp(x) - 1
    would cancel to noise and could turn negative."""
    return (torch.expm1(log_ratio) - log_ratio).mean()


def normalize(advantages: torch.Tensor) -> torch.Tensor:
    if advantages.numel() < 2:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def clip_grad_norm(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scales a (flat) gradient in place so that its L2 norm is at most max_norm and returns
    the norm before scaling, as torch.nn.utils.clip_grad_norm_ does for a parameter list."""
    norm = torch.linalg.vector_norm(grad)
    grad.mul_((max_norm / (norm + 1e-6)).clamp_(max=1.0))
    return norm
