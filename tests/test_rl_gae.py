"""Generalised Advantage Estimation: a case worked by hand and the identities it must obey."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ppocompress.rl import compute_gae

GAMMA, LAM = 0.9, 0.8


def col(values, dtype=torch.float32):
    """A (steps, 1) tensor: one env."""
    return torch.tensor(values, dtype=dtype)[:, None]


def test_gae_hand_computed_truncation_at_step_1_and_termination_at_step_3():
    rewards = col([1.0, 2.0, 3.0, 4.0])
    values = col([0.5, 1.0, 1.5, 2.0])
    # Step 1 is truncated: its next value is V(final obs) = 3.0, not V(reset obs) = values[2].
    # Step 3 terminates: its next value 5.0 must be ignored.
    next_values = col([1.0, 3.0, 2.0, 5.0])
    terminated = col([0, 0, 0, 1], torch.bool)
    ended = col([0, 1, 0, 1], torch.bool)

    # deltas: d0 = 1 + .9*1 - .5 = 1.4     d1 = 2 + .9*3 - 1 = 3.7
    #         d2 = 3 + .9*2 - 1.5 = 3.3    d3 = 4 + 0 - 2 = 2.0
    # gamma*lambda = 0.72
    # A3 = 2.0
    # A2 = 3.3 + 0.72 * 2.0 = 4.74
    # A1 = 3.7               (the episode ended at step 1: no lambda-sum from step 2)
    # A0 = 1.4 + 0.72 * 3.7 = 4.064
    expected_adv = col([4.064, 3.7, 4.74, 2.0])
    expected_ret = col([4.564, 4.7, 6.24, 4.0])

    adv, ret = compute_gae(rewards, values, next_values, terminated, ended, GAMMA, LAM)
    torch.testing.assert_close(adv, expected_adv, rtol=0, atol=1e-5)
    torch.testing.assert_close(ret, expected_ret, rtol=0, atol=1e-5)


def test_gae_handles_several_envs_independently():
    rewards = torch.tensor([[1.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    values = torch.zeros(2, 2, dtype=torch.float64)
    next_values = torch.zeros(2, 2, dtype=torch.float64)
    terminated = torch.zeros(2, 2, dtype=torch.bool)
    ended = torch.tensor([[True, False], [False, False]])
    adv, _ = compute_gae(rewards, values, next_values, terminated, ended, 0.5, 1.0)
    # env 0: episode ends at step 0 -> A0 = 1; env 1: A0 = 0 + 0.5 * 2 = 1, A1 = 2.
    torch.testing.assert_close(adv, torch.tensor([[1.0, 1.0], [1.0, 2.0]], dtype=torch.float64))


_floats = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)


@st.composite
def rollouts(draw, with_ends=True):
    steps = draw(st.integers(1, 12))
    envs = draw(st.integers(1, 3))
    shape = (steps, envs)
    rewards = draw(arrays(np.float64, shape, elements=_floats))
    values = draw(arrays(np.float64, shape, elements=_floats))
    next_values = draw(arrays(np.float64, shape, elements=_floats))
    if with_ends:
        truncated = draw(arrays(np.bool_, shape))
        terminated = draw(arrays(np.bool_, shape))
    else:
        truncated = terminated = np.zeros(shape, dtype=bool)
    gamma = draw(st.floats(0.0, 1.0))
    t = torch.from_numpy
    return t(rewards), t(values), t(next_values), t(terminated), t(terminated | truncated), gamma


@settings(max_examples=60, deadline=None)
@given(rollouts(), st.floats(0.0, 1.0))
def test_gae_returns_equal_advantages_plus_values(rollout, lam):
    rewards, values, next_values, terminated, ended, gamma = rollout
    adv, ret = compute_gae(rewards, values, next_values, terminated, ended, gamma, lam)
    torch.testing.assert_close(ret, adv + values, rtol=0, atol=0)


@settings(max_examples=60, deadline=None)
@given(rollouts())
def test_gae_lambda_zero_gives_one_step_td_errors(rollout):
    rewards, values, next_values, terminated, ended, gamma = rollout
    adv, _ = compute_gae(rewards, values, next_values, terminated, ended, gamma, 0.0)
    td = rewards + gamma * next_values * (~terminated).double() - values
    torch.testing.assert_close(adv, td, rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(rollouts(with_ends=False), arrays(np.float64, (3,), elements=_floats))
def test_gae_lambda_one_without_episode_ends_gives_discounted_sum_plus_tail_minus_value(rollout, last):
    rewards, values, _, terminated, ended, gamma = rollout
    steps, envs = rewards.shape
    last_values = torch.from_numpy(last[:envs])
    # Without episode ends, the state after step t is the state of step t+1.
    next_values = torch.cat([values[1:], last_values[None]])
    adv, _ = compute_gae(rewards, values, next_values, terminated, ended, gamma, 1.0)

    expected = torch.empty_like(rewards)
    for t in range(steps):
        discounted = sum(gamma**k * rewards[t + k] for k in range(steps - t))
        expected[t] = discounted + gamma ** (steps - t) * last_values - values[t]
    # gamma*lambda goes through float32 inside compute_gae, hence the tolerance
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gae_keeps_the_input_dtype_and_shape(dtype):
    shape = (5, 3)
    zeros = torch.zeros(shape, dtype=dtype)
    flags = torch.zeros(shape, dtype=torch.bool)
    adv, ret = compute_gae(zeros, zeros, zeros, flags, flags, 0.99, 0.95)
    assert adv.shape == ret.shape == shape
    assert adv.dtype == ret.dtype == dtype
