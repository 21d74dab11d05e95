"""A plan's reward and its fidelity to the dense model, each from the other.

Fidelity is what compress/measure/fidelity.py measures (mean cosine of sentence embeddings
for encoders, exp(-KL) of next-token distributions for causal LMs), 1 for the dense model.
The reward is -log(1 - fidelity), -log of the quality lost: it keeps separating plans as
fidelity approaches 1, where the differences that matter are small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from ppocompress.search.plan import Plan

PlansScorer = Callable[[list[Plan]], Iterable[float]]  # plans -> their rewards, in order
LOSS_FLOOR = 1e-6  # the least quality lost a reward counts, so that a perfect plan's reward is finite


def quality_lost(fidelity: float) -> float:
    return 1.0 - fidelity


def additive_loss(lost):
    """Quality lost (a number or an array) on the scale where layers' losses add up:
    -log(fidelity), the KL itself for a causal LM, about 1 - cosine for an encoder. Quality
    lost saturates at 1: one dropped decoder layer can lose nearly all of it, so one-off
    losses added up, and pairs' extras, would be wrong by orders of magnitude."""
    return -np.log1p(-np.minimum(lost, 1.0 - 1e-15))


def lost_from_additive(total: float) -> float:
    """The quality lost a total on additive_loss's scale means."""
    return -math.expm1(-total)


def reward_from_loss(loss: float, floor: float = LOSS_FLOOR) -> float:
    """The reward of a plan that loses `loss` of the dense model's quality (at least `floor`)."""
    return -math.log(max(loss, floor))


def reward_from_fidelity(fidelity: float) -> float:
    return reward_from_loss(quality_lost(fidelity))


def fidelity_from_reward(reward: float) -> float:
    return 1.0 - math.exp(-reward)


def one_by_one(score: Callable[[Plan], float]) -> PlansScorer:
    """A PlansScorer from a function that scores one plan."""
    return lambda plans: [score(plan) for plan in plans]
