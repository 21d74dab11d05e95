"""Action distributions: agreement with torch.distributions, and invalid-action masks."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ppocompress.rl.distributions import DiagGaussian, MultiCategorical


@st.composite
def masked_logits(draw):
    """(logits (batch, sum nvec), nvec, mask) with at least one valid action per dimension."""
    nvec = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    batch = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([0.1, 1.0, 10.0, 30.0]))
    logits = torch.from_numpy(rng.normal(0.0, scale, (batch, sum(nvec))).astype(np.float32))
    parts = []
    for n in nvec:
        part = rng.random((batch, n)) < draw(st.floats(0.0, 1.0))
        part[np.arange(batch), rng.integers(0, n, batch)] = True  # one valid action at least
        parts.append(part)
    return logits, nvec, torch.from_numpy(np.concatenate(parts, axis=1)), seed


@settings(max_examples=40, deadline=None)
@given(masked_logits())
def test_masked_actions_are_never_sampled(case):
    logits, nvec, mask, seed = case
    repeats = 300
    dist = MultiCategorical(logits.repeat(repeats, 1), nvec, mask.repeat(repeats, 1))
    actions = dist.sample(torch.Generator().manual_seed(seed))
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(nvec)[:-1]]))
    chosen = mask.repeat(repeats, 1).gather(1, actions + offsets)
    assert chosen.all()


@settings(max_examples=40, deadline=None)
@given(masked_logits())
def test_masked_actions_get_probability_exactly_zero_and_stay_finite(case):
    logits, nvec, mask, seed = case
    dist = MultiCategorical(logits, nvec, mask)
    probs = torch.cat([lp.exp() for lp in dist.log_probs], dim=-1)
    assert torch.all(probs[~mask] == 0.0)
    # valid actions keep the softmax over the valid logits only
    for lp, logit_part, mask_part in zip(dist.log_probs, torch.split(logits, nvec, -1), torch.split(mask, nvec, -1)):
        expected = torch.softmax(logit_part.masked_fill(~mask_part, -torch.inf), dim=-1)
        torch.testing.assert_close(lp.exp(), expected, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(dist.entropy()).all()
    sampled = dist.sample(torch.Generator().manual_seed(seed))
    assert torch.isfinite(dist.log_prob(sampled)).all()
    # even the log-probability of a masked action is finite (very negative), never nan/inf
    assert all(torch.isfinite(lp).all() for lp in dist.log_probs)


def test_masked_entropy_is_zero_and_gradients_finite_when_only_one_action_is_valid():
    logits = torch.randn(2, 5, requires_grad=True)
    mask = torch.tensor([[False, False, True, False, False], [True, False, False, False, False]])
    dist = MultiCategorical(logits, [5], mask)
    entropy = dist.entropy()
    assert torch.equal(entropy, torch.zeros(2))
    (entropy.sum() + dist.log_prob(torch.tensor([[2], [0]])).sum()).backward()
    assert torch.isfinite(logits.grad).all()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_multicategorical_matches_torch_categorical_without_mask(nvec, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(7, sum(nvec), generator=gen) * 3
    actions = torch.stack([torch.randint(0, n, (7,), generator=gen) for n in nvec], dim=1)
    dist = MultiCategorical(logits, nvec)
    refs = [torch.distributions.Categorical(logits=part) for part in torch.split(logits, nvec, dim=-1)]
    expected_log_prob = sum(ref.log_prob(actions[:, i]) for i, ref in enumerate(refs))
    expected_entropy = sum(ref.entropy() for ref in refs)
    torch.testing.assert_close(dist.log_prob(actions), expected_log_prob, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.entropy(), expected_entropy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.mode(), torch.stack([r.probs.argmax(-1) for r in refs], dim=-1))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.floats(-3.0, 2.0), st.integers(0, 2**31 - 1))
def test_diag_gaussian_matches_torch_normal(dim, log_std_shift, seed):
    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(6, dim, generator=gen)
    log_std = torch.randn(dim, generator=gen) * 0.5 + log_std_shift
    actions = mean + torch.randn(6, dim, generator=gen) * 3
    dist = DiagGaussian(mean, log_std)
    ref = torch.distributions.Normal(mean, log_std.exp().expand_as(mean))
    torch.testing.assert_close(dist.log_prob(actions), ref.log_prob(actions).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dist.entropy(), ref.entropy().sum(-1), rtol=1e-5, atol=1e-5)
    assert torch.equal(dist.mode(), mean)


def test_diag_gaussian_samples_have_the_given_mean_and_std():
    mean = torch.tensor([[1.0, -2.0]]).repeat(20000, 1)
    log_std = torch.log(torch.tensor([0.5, 2.0]))
    samples = DiagGaussian(mean, log_std).sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples.mean(0), torch.tensor([1.0, -2.0]), rtol=0, atol=0.05)
    torch.testing.assert_close(samples.std(0), torch.tensor([0.5, 2.0]), rtol=0.03, atol=0)
