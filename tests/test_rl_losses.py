"""PPO's loss terms on hand-worked values, and the properties of the KL estimator."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ppocompress.rl.losses import (
    approx_kl,
    clipped_surrogate_loss,
    normalize,
    value_loss,
)

EPS = 0.2


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected"),
    [
        # positive advantage: the gain is capped at (1 + eps) A, never capped below
        (1.0, 1.0, -1.0),  # inside the clip range: -r A
        (1.1, 2.0, -2.2),  # inside: -r A
        (1.5, 1.0, -1.2),  # above 1+eps: -(1+eps) A
        (0.5, 1.0, -0.5),  # below 1-eps: the unclipped (pessimistic) -r A
        # negative advantage: the gain is capped at (1 - eps) A
        (0.9, -1.0, 0.9),  # inside: -r A
        (0.5, -1.0, 0.8),  # below 1-eps: -(1-eps) A
        (1.5, -1.0, 1.5),  # above 1+eps: the unclipped (pessimistic) -r A
    ],
)
def test_clipped_surrogate_loss_on_hand_values(ratio, advantage, expected):
    loss = clipped_surrogate_loss(torch.tensor([ratio]), torch.tensor([advantage]), EPS)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_clipped_surrogate_loss_is_the_mean_over_the_batch():
    ratio = torch.tensor([1.0, 1.5, 0.5, 1.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # per sample: -1.0, -1.2, 0.8, 1.5
    assert clipped_surrogate_loss(ratio, adv, EPS).item() == pytest.approx((-1.0 - 1.2 + 0.8 + 1.5) / 4)


@pytest.mark.parametrize(("ratio", "advantage"), [(1.5, 1.0), (0.5, -1.0)])
def test_clipped_surrogate_loss_has_zero_gradient_past_the_clip_in_the_favoured_direction(ratio, advantage):
    r = torch.tensor([ratio], requires_grad=True)
    clipped_surrogate_loss(r, torch.tensor([advantage]), EPS).backward()
    assert r.grad.item() == 0.0


@pytest.mark.parametrize(
    ("value", "old", "ret", "clip", "expected"),
    [
        (2.0, 1.0, 3.0, None, 1.0),  # no clipping: (v - R)^2
        (1.2, 1.0, 2.0, 0.5, 0.64),  # inside the clip: both terms equal (1.2 - 2)^2
        (2.0, 1.0, 3.0, 0.5, 2.25),  # clipped value 1.5 is worse: (1.5 - 3)^2
        (2.0, 1.0, 1.0, 0.5, 1.0),  # clipped value 1.5 is better, unclipped (2 - 1)^2 kept
        (0.0, 1.0, -1.0, 0.25, 3.0625),  # clipped value 0.75: (0.75 + 1)^2 > (0 + 1)^2
    ],
)
def test_value_loss_on_hand_values(value, old, ret, clip, expected):
    loss = value_loss(torch.tensor([value]), torch.tensor([old]), torch.tensor([ret]), clip)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_value_loss_is_the_mean_over_the_batch():
    values, old, ret = torch.tensor([2.0, 1.2]), torch.tensor([1.0, 1.0]), torch.tensor([3.0, 2.0])
    assert value_loss(values, old, ret, 0.5).item() == pytest.approx((2.25 + 0.64) / 2)


# Any magnitude, tiny ones included: expm1(x) - x ~ x^2 / 2 must never round below 0.
_log_ratios = arrays(np.float32, st.integers(1, 50), elements=st.floats(-5.0, 5.0, width=32))


@settings(max_examples=80, deadline=None)
@given(_log_ratios)
def test_approx_kl_is_never_negative(log_ratio):
    assert approx_kl(torch.from_numpy(log_ratio)).item() >= 0.0


def test_approx_kl_is_never_negative_for_tiny_float32_log_ratios():
    kl = approx_kl(torch.full((4,), 1e-6, dtype=torch.float32)).item()
    assert kl >= 0.0
    assert kl == pytest.approx(0.5e-12, rel=0.25)  # x^2 / 2


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 50))
def test_approx_kl_is_zero_at_ratio_one(n):
    assert approx_kl(torch.zeros(n)).item() == 0.0


def test_approx_kl_on_a_hand_value():
    # (e^1 - 1) - 1 and (e^-1 - 1) + 1, averaged
    expected = ((np.e - 2.0) + np.exp(-1.0)) / 2
    assert approx_kl(torch.tensor([1.0, -1.0], dtype=torch.float64)).item() == pytest.approx(expected)


_advantages = arrays(np.float64, st.integers(2, 200), elements=st.floats(-1e3, 1e3, allow_nan=False))


@settings(max_examples=80, deadline=None)
@given(_advantages)
def test_normalize_gives_mean_zero_and_std_just_under_one(adv):
    """(a - mean) / (std + 1e-8). Up to the rounding of a - mean (n ulp of max |a|, divided
    like everything else): mean 0; std = std / (std + 1e-8), which is 1 for any real
    spread; and advantages that are all equal (a spread below rounding) map to ~0, finite."""
    tensor = torch.from_numpy(adv)
    out = normalize(tensor)
    std = tensor.std().item()
    rounding = adv.size * np.finfo(np.float64).eps * float(tensor.abs().max()) / (std + 1e-8)
    assert torch.isfinite(out).all()
    assert abs(out.mean().item()) <= rounding + 1e-12
    if std > 1e3 * adv.size * np.finfo(np.float64).eps * float(tensor.abs().max()):  # a spread well above rounding
        assert out.std().item() == pytest.approx(std / (std + 1e-8), rel=1e-9)
    else:
        assert out.abs().max().item() <= rounding + 1e-12


def test_normalize_leaves_a_single_advantage_unchanged():
    single = torch.tensor([3.5])
    assert torch.equal(normalize(single), single)
