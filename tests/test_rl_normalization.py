"""Running statistics: observation normalisation and reward scaling."""

import numpy as np
import pytest
import torch
from gymnasium.vector import SyncVectorEnv
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ppocompress.rl import PPO
from ppocompress.rl.normalization import (
    ObservationNormalizer,
    RewardScaler,
    RunningMeanStd,
)
from rl_toy_envs import NormalObsEnv, tiny_config


@st.composite
def batches(draw):
    dim = draw(st.integers(1, 3))
    sizes = draw(st.lists(st.integers(1, 20), min_size=1, max_size=6))
    elements = st.floats(-100.0, 100.0, allow_nan=False)
    return [draw(arrays(np.float64, (n, dim), elements=elements)) for n in sizes]


@settings(max_examples=60, deadline=None)
@given(batches())
def test_running_mean_std_over_batches_equals_numpy_on_their_concatenation(parts):
    rms = RunningMeanStd((parts[0].shape[1],))
    rms.count.fill_(0.0)  # drop the 1e-4 pseudo-count so the result is exact
    for part in parts:
        rms.update(torch.from_numpy(part))
    everything = np.concatenate(parts)
    np.testing.assert_allclose(rms.mean.numpy(), everything.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rms.var.numpy(), everything.var(axis=0), rtol=1e-9, atol=1e-7)
    assert rms.count.item() == len(everything)


@settings(max_examples=40, deadline=None)
@given(batches())
def test_running_mean_std_with_its_default_prior_is_numpy_plus_a_1e_4_pseudo_sample(parts):
    # The default state is a pseudo-sample of weight 1e-4 with mean 0 and variance 1.
    rms = RunningMeanStd((parts[0].shape[1],))
    for part in parts:
        rms.update(torch.from_numpy(part))
    x = np.concatenate(parts)
    eps = 1e-4
    mean = x.sum(axis=0) / (len(x) + eps)
    var = (((x - mean) ** 2).sum(axis=0) + eps * (1.0 + mean**2)) / (len(x) + eps)
    np.testing.assert_allclose(rms.mean.numpy(), mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(rms.var.numpy(), var, rtol=1e-8, atol=1e-7)


def test_observation_normalizer_standardises_and_clips():
    norm = ObservationNormalizer(2, clip=3.0)
    norm.mean.copy_(torch.tensor([1.0, -1.0], dtype=torch.float64))
    norm.var.copy_(torch.tensor([4.0, 0.25], dtype=torch.float64))
    out = norm(torch.tensor([[3.0, -1.5], [100.0, -100.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, -1.0], [3.0, -3.0]]), rtol=1e-6, atol=1e-6)


def test_reward_scaler_divides_by_the_running_std_of_the_discounted_return():
    gamma, n_envs, steps = 0.9, 2, 30
    rng = np.random.default_rng(0)
    rewards = rng.normal(1.0, 2.0, (steps, n_envs))
    ended = rng.random((steps, n_envs)) < 0.2

    scaler = RewardScaler(n_envs, gamma, clip=10.0)
    scaler.count.fill_(0.0)  # exact statistics, no pseudo-count
    running = np.zeros(n_envs)
    seen: list[np.ndarray] = []
    for t in range(steps):
        out = scaler.scale(torch.tensor(rewards[t], dtype=torch.float32), torch.from_numpy(ended[t]))
        running = gamma * running + rewards[t]
        seen.append(running.copy())
        expected = np.clip(rewards[t] / np.sqrt(np.var(np.concatenate(seen)) + 1e-8), -10, 10)
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)
        running[ended[t]] = 0.0
    np.testing.assert_allclose(scaler.discounted_return.numpy(), running, rtol=1e-6, atol=1e-6)


def test_reward_scaler_keeps_the_sign_and_clips():
    scaler = RewardScaler(1, 0.99, clip=2.0)
    scaler.var.fill_(1e-4)
    scaler.count.fill_(1e6)  # a frozen, tiny std
    out = scaler.scale(torch.tensor([-5.0]), torch.tensor([False]))
    assert out.item() == -2.0


def normal_obs_agent(**overrides) -> PPO:
    vec = SyncVectorEnv([NormalObsEnv for _ in range(2)])
    return PPO(vec, tiny_config(normalize_observations=True, **overrides), seed=0)


def test_observation_normalisation_learns_the_env_observation_mean_and_variance():
    agent = normal_obs_agent()
    agent.learn(1024)
    norm = agent.policy.obs_normalizer
    assert norm.count.item() == pytest.approx(1024, abs=1e-3)
    # 1024 samples: the standard error of the mean is STD / 32
    np.testing.assert_allclose(norm.mean.numpy(), NormalObsEnv.MEAN, atol=4 * NormalObsEnv.STD.max() / 32)
    np.testing.assert_allclose(norm.var.numpy(), NormalObsEnv.STD**2, rtol=0.2)


def test_observation_statistics_change_only_while_collecting():
    agent = normal_obs_agent()
    agent.learn(128)
    before = {k: v.clone() for k, v in agent.policy.obs_normalizer.state_dict().items()}
    agent.predict(np.random.default_rng(0).normal(50.0, 1.0, (64, 2)).astype(np.float32))
    after = agent.policy.obs_normalizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_observation_normalisation_is_saved_and_loaded(tmp_path):
    agent = normal_obs_agent()
    agent.learn(256)
    agent.save(tmp_path / "agent")
    loaded = PPO.load(tmp_path / "agent")
    assert loaded.policy.obs_normalizer is not None
    for key, value in agent.policy.obs_normalizer.state_dict().items():
        assert torch.equal(loaded.policy.obs_normalizer.state_dict()[key], value), key
    obs = np.random.default_rng(0).normal(3.0, 2.0, (32, 2)).astype(np.float32)
    assert torch.equal(loaded.policy.features(obs), agent.policy.features(obs))


def test_reward_scaling_trains_and_its_state_is_saved_and_loaded(tmp_path):
    agent = PPO("CartPole-v1", tiny_config(scale_rewards=True), seed=0)
    agent.learn(192)
    scaler = agent.reward_scaler
    assert scaler is not None
    assert scaler.count.item() == pytest.approx(192, abs=1e-3)  # one return per env per step
    agent.save(tmp_path)
    loaded = PPO.load(tmp_path)
    assert loaded.reward_scaler is not None
    for key, value in scaler.state_dict().items():
        assert torch.equal(loaded.reward_scaler.state_dict()[key], value), key
