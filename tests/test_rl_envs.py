"""What PPO accepts as an environment: action spaces, invalid-action masks, vector envs
and their autoreset modes, and the bootstrapping of time-limit truncations."""

import math
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from ppocompress.errors import UserError
from ppocompress.rl import PPO
from ppocompress.rl.rollout import Batch, RolloutCollector
from rl_toy_envs import (
    BoxToyEnv,
    CounterEnv,
    MaskedActionTaken,
    MaskedDiscreteEnv,
    MaskedMethodLazyEnv,
    tiny_config,
)


def collector_for(agent: PPO, seed: int = 0) -> RolloutCollector:
    return RolloutCollector(agent.env, agent.policy, agent.generator, None, seed)


# ---------------------------------------------------------------- action spaces
@pytest.mark.parametrize(
    ("env_id", "log_std_init"),
    [("RLToy/Discrete-v0", 0.0), ("RLToy/MultiDiscrete-v0", 0.0), ("RLToy/Box-v0", 0.0), ("RLToy/Box-v0", 2.0)],
)
def test_each_action_space_trains_a_few_hundred_steps(env_id, log_std_init):
    # The toy envs assert that every action they receive lies in their action space.
    agent = PPO(env_id, tiny_config(log_std_init=log_std_init), seed=0)
    before = [p.detach().clone() for p in agent.policy.parameters()]
    history: list[dict] = []
    agent.learn(320, callback=lambda _a, m: history.append(m))
    assert agent.num_timesteps == 5 * 64
    assert len(history) == 5
    assert all(math.isfinite(m["policy_loss"]) and math.isfinite(m["value_loss"]) for m in history)
    assert all(not torch.equal(b, p) for b, p in zip(before, agent.policy.parameters()))


def test_box_actions_sent_to_the_env_are_clipped_but_the_batch_keeps_the_raw_samples():
    env = BoxToyEnv()  # raises on any action outside [-1, 1]
    agent = PPO(env, tiny_config(n_envs=1, log_std_init=2.0), seed=0)
    batch = collector_for(agent).collect(64, 0.99, 0.95)
    stored = batch.actions.numpy()
    received = np.stack(env.received)
    assert stored.shape == received.shape == (64, 2)
    assert np.abs(stored).max() > 1.0  # std e^2: the raw samples leave the bounds
    assert np.all(np.abs(received) <= 1.0)
    np.testing.assert_array_equal(received, np.clip(stored, -1.0, 1.0))


def test_box_predict_returns_actions_within_bounds():
    agent = PPO("RLToy/Box-v0", tiny_config(log_std_init=2.0), seed=0)
    obs = np.random.default_rng(0).uniform(-1, 1, (200, 3)).astype(np.float32)
    actions = agent.predict(obs)
    assert actions.shape == (200, 2)
    assert np.all(np.abs(actions) <= 1.0)


# ---------------------------------------------------------------- invalid-action masks
def test_masked_toy_env_really_raises_on_a_masked_action():
    env = MaskedDiscreteEnv("info")
    _, info = env.reset(seed=0)
    masked = int(np.flatnonzero(~info["action_mask"])[0])
    with pytest.raises(MaskedActionTaken):
        env.step(masked)


def favour_action(agent: PPO, index: int, strength: float = 50.0) -> None:
    """Make the untrained policy prefer logit `index` overwhelmingly."""
    with torch.no_grad():
        agent.policy.action_head.bias.zero_()
        agent.policy.action_head.bias[index] = strength


@pytest.mark.parametrize("env_id", ["RLToy/MaskedInfo-v0", "RLToy/MaskedMethod-v0"])
def test_training_never_takes_a_masked_action(env_id):
    agent = PPO(env_id, tiny_config(), seed=0)
    favour_action(agent, 0)  # action 0 is masked in 2/3 of the states
    agent.learn(512)  # the env raises MaskedActionTaken on a masked action
    assert agent.num_timesteps == 512


def test_training_stores_the_masks_in_the_batch():
    agent = PPO("RLToy/MaskedInfo-v0", tiny_config(), seed=0)
    batch = collector_for(agent).collect(16, 0.99, 0.95)
    assert batch.masks is not None and batch.masks.shape == (32, 6)
    assert torch.all(batch.masks.sum(dim=1) == 2)
    assert torch.all(batch.masks.gather(1, batch.actions))


def test_training_with_masks_in_a_user_next_step_vector_env():
    vec = SyncVectorEnv([lambda: MaskedDiscreteEnv("info") for _ in range(2)])
    agent = PPO(vec, tiny_config(), seed=0)
    favour_action(agent, 0)
    agent.learn(256)
    assert agent.num_timesteps == 256


@pytest.mark.parametrize("mask_via", ["info", "method"])
def test_training_with_masks_on_a_single_env_instance(mask_via):
    env = MaskedDiscreteEnv(mask_via)
    agent = PPO(env, tiny_config(n_envs=1), seed=0)
    favour_action(agent, 0)
    agent.learn(128)
    assert len(env.actions_taken) == 128


def test_training_honours_an_action_masks_method_that_needs_a_reset_first():
    """Regression: the mask method was once probed before reset, and a failure there
    silently switched masking off."""
    env = MaskedMethodLazyEnv()
    agent = PPO(env, tiny_config(n_envs=1), seed=0)
    agent.learn(128)
    assert len(env.actions_taken) == 128


@pytest.mark.parametrize("deterministic", [True, False])
def test_predict_never_chooses_a_masked_action(deterministic):
    agent = PPO("RLToy/MaskedInfo-v0", tiny_config(), seed=0)
    favour_action(agent, 0)
    with torch.no_grad():
        agent.policy.action_head.bias[3] = 10.0  # the best allowed action
    obs = np.random.default_rng(0).uniform(-1, 1, (300, 3)).astype(np.float32)
    mask = np.array([False, True, False, True, False, False])
    actions = agent.predict(obs, deterministic=deterministic, action_mask=np.tile(mask, (300, 1)))
    assert mask[actions].all()
    if deterministic:
        assert np.all(actions == 3)
    single = agent.predict(obs[0], deterministic=deterministic, action_mask=mask)
    assert mask[int(single)]
    assert agent.predict(obs[0], deterministic=True) == 0  # without the mask: the favoured action


def test_multidiscrete_concatenated_mask_is_honoured_in_training_and_predict():
    agent = PPO("RLToy/MaskedMultiDiscrete-v0", tiny_config(), seed=0)
    favour_action(agent, 0)  # sub-action 0 of dimension 0
    favour_action_bias = agent.policy.action_head.bias
    with torch.no_grad():
        favour_action_bias[3] = 50.0  # sub-action 0 of dimension 1
    agent.learn(512)  # the env raises on any masked sub-action
    assert agent.num_timesteps == 512

    mask = np.array([False, True, True, False, False, False, True])  # dim 0: {1, 2}; dim 1: {3}
    obs = np.random.default_rng(1).uniform(-1, 1, (200, 3)).astype(np.float32)
    for deterministic in (True, False):
        actions = agent.predict(obs, deterministic=deterministic, action_mask=np.tile(mask, (200, 1)))
        assert actions.shape == (200, 2)
        assert np.isin(actions[:, 0], [1, 2]).all()
        assert np.all(actions[:, 1] == 3)


def test_mask_of_the_wrong_length_is_a_user_error():
    class WrongMaskEnv(MaskedDiscreteEnv):
        def _info(self):
            return {"action_mask": np.ones(self.n + 1, dtype=bool)}

    with pytest.raises(UserError, match="action mask has 7 entries"):
        PPO(WrongMaskEnv(), tiny_config(n_envs=1), seed=0).learn(32)


def test_mask_that_allows_nothing_is_a_user_error():
    class EmptyMaskEnv(MaskedDiscreteEnv):
        def _info(self):
            return {"action_mask": np.zeros(self.n, dtype=bool)}

    with pytest.raises(UserError, match="allows no action"):
        PPO(EmptyMaskEnv(), tiny_config(n_envs=1), seed=0).learn(32)


# ---------------------------------------------------------------- vector envs
def test_user_sync_vector_env_is_used_as_given():
    vec = SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(3)])
    agent = PPO(vec, tiny_config(n_envs=2), seed=0)
    assert agent.env is vec
    agent.learn(128)
    assert agent.num_timesteps == 2 * 32 * 3  # two rollouts of 32 steps in 3 envs
    vec.close()


# Regression: the mask probe once called action_masks() on envs without it, which shuts
# AsyncVectorEnv workers down, so every Discrete env broke under async vectorization.
ASYNC_ENV_IDS = ["RLToy/Box-v0", "CartPole-v1"]


@pytest.mark.parametrize("env_id", ASYNC_ENV_IDS)
def test_user_async_vector_env_trains(env_id):
    vec = AsyncVectorEnv([lambda: gym.make(env_id) for _ in range(2)])
    try:
        agent = PPO(vec, tiny_config(), seed=0)
        history: list[dict] = []
        agent.learn(128, callback=lambda _a, m: history.append(m))
        assert agent.num_timesteps == 128
        assert all(math.isfinite(m["policy_loss"]) for m in history)
    finally:
        vec.close(terminate=True)


@pytest.mark.parametrize("env_id", ASYNC_ENV_IDS)
def test_async_vectorization_from_an_env_id_trains(env_id):
    agent = PPO(env_id, tiny_config(vectorization="async"), seed=0)
    try:
        assert isinstance(agent.env, AsyncVectorEnv)
        agent.learn(64)
        assert agent.num_timesteps == 64
    finally:
        agent.env.close(terminate=True)


def test_user_async_vector_env_with_an_action_masks_method_trains():
    vec = AsyncVectorEnv([lambda: gym.make("RLToy/MaskedMethod-v0") for _ in range(2)])
    try:
        agent = PPO(vec, tiny_config(), seed=0)
        favour_action(agent, 0)
        agent.learn(128)  # the env raises on a masked action
        assert agent.num_timesteps == 128
    finally:
        vec.close(terminate=True)


def test_next_step_autoreset_drops_the_reset_transitions():
    # Episodes of exactly 3 steps; under NEXT_STEP every 4th step only resets the env.
    vec = SyncVectorEnv([lambda: CounterEnv(length=3, terminate=True) for _ in range(2)])
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    collector = collector_for(PPO(vec, tiny_config(), seed=0))

    # steps 0..9 of each env: step 3 and 7 are reset steps -> 8 kept per env
    first = collector.collect(10, 0.99, 0.95)
    assert len(first) == 2 * 8
    assert Counter(first.features[:, 0].tolist()) == {0.0: 6, 1.0: 6, 2.0: 4}
    # steps 10..19: 11, 15 and 19 are reset steps -> 7 kept per env
    second = collector.collect(10, 0.99, 0.95)
    assert len(second) == 2 * 7
    assert Counter(second.features[:, 0].tolist()) == {0.0: 4, 1.0: 4, 2.0: 6}
    for batch in (first, second):
        assert len(batch.actions) == len(batch.log_probs) == len(batch.returns) == len(batch)
    # episode statistics count only real steps
    assert set(collector.recent_lengths) == {3}
    assert set(collector.recent_returns) == {3.0}
    assert len(collector.recent_lengths) == 2 * 5  # episodes end at steps 2, 6, 10, 14, 18 (0-based)


def test_a_rollout_is_flattened_step_by_step_without_the_rows_not_kept():
    per_step = torch.arange(12.0).reshape(3, 2, 2)  # (step, env, feature): row (t, i) holds 4t + 2i, 4t + 2i + 1
    keep = torch.tensor([True, False, True, True, False, True])  # env 1 of step 0 and env 0 of step 2 dropped
    batch = Batch.from_rollout(keep, features=per_step, actions=per_step, log_probs=per_step[..., 0],
                               values=per_step[..., 1], advantages=per_step[..., 0], returns=per_step[..., 1], masks=None)
    assert len(batch) == 4 and batch.masks is None
    assert batch.features.tolist() == [[0.0, 1.0], [4.0, 5.0], [6.0, 7.0], [10.0, 11.0]]
    assert batch.log_probs.tolist() == [0.0, 4.0, 6.0, 10.0] and batch.values.tolist() == [1.0, 5.0, 7.0, 11.0]


def test_same_step_autoreset_keeps_every_transition():
    agent = PPO("RLToy/CounterTerminated-v0", tiny_config(), seed=0)
    assert agent.env.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    batch = collector_for(agent).collect(10, 0.99, 0.95)
    assert len(batch) == 2 * 10
    assert Counter(batch.features[:, 0].tolist()) == {0.0: 4, 1.0: 4, 2.0: 4, 3.0: 4, 4.0: 4}


def test_vector_env_with_autoreset_disabled_is_a_user_error():
    vec = SyncVectorEnv([lambda: CounterEnv()], autoreset_mode=AutoresetMode.DISABLED)
    with pytest.raises(UserError, match="DISABLED"):
        PPO(vec, tiny_config(), seed=0)


def test_env_instance_without_spec_and_several_envs_is_a_user_error():
    with pytest.raises(UserError, match="gym.make"):
        PPO(CounterEnv(), tiny_config(n_envs=2), seed=0)


# ---------------------------------------------------------------- truncation bootstrapping
GAMMA, LENGTH = 0.9, 5


def truncated_agent(path: str, terminate: bool) -> PPO:
    config = tiny_config(gamma=GAMMA, gae_lambda=0.0)
    if path == "env id":  # SAME_STEP, copies made with gym.make
        env_id = "RLToy/CounterTerminated-v0" if terminate else "RLToy/CounterTruncated-v0"
        agent = PPO(env_id, config, seed=0)
    elif path == "env instance":  # SAME_STEP, the instance itself
        agent = PPO(CounterEnv(LENGTH, terminate), tiny_config(n_envs=1, gamma=GAMMA, gae_lambda=0.0), seed=0)
    else:  # a user vector env with the default NEXT_STEP autoreset
        agent = PPO(SyncVectorEnv([lambda: CounterEnv(LENGTH, terminate) for _ in range(2)]), config, seed=0)
    expected_mode = AutoresetMode.NEXT_STEP if path == "user NEXT_STEP vector env" else AutoresetMode.SAME_STEP
    assert agent.env.metadata["autoreset_mode"] == expected_mode
    return agent


PATHS = ["env id", "env instance", "user NEXT_STEP vector env"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("terminate", [False, True])
def test_return_at_episode_end_with_constant_value_head(path, terminate):
    c = 2.0
    agent = truncated_agent(path, terminate)
    with torch.no_grad():
        agent.policy.value_head.weight.zero_()
        agent.policy.value_head.bias.fill_(c)
    batch = collector_for(agent).collect(23, GAMMA, 0.0)
    last_step = batch.features[:, 0] == LENGTH - 1  # the step that ends the episode
    assert last_step.sum() >= 4
    # truncation bootstraps: 1 + gamma * c; termination does not: 1
    at_end = 1.0 if terminate else 1.0 + GAMMA * c
    torch.testing.assert_close(batch.returns[last_step], torch.full((int(last_step.sum()),), at_end))
    torch.testing.assert_close(batch.returns[~last_step], torch.full((int((~last_step).sum()),), 1.0 + GAMMA * c))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("terminate", [False, True])
def test_truncation_bootstraps_from_the_final_observation_not_the_reset_one(path, terminate):
    agent = truncated_agent(path, terminate)
    with torch.no_grad():  # a critic that clearly tells the counter values apart
        agent.policy.value_head.bias.fill_(0.0)
        agent.policy.value_head.weight.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(0))
        values = agent.policy.value(torch.arange(LENGTH + 1, dtype=torch.float32)[:, None])
    assert abs(values[LENGTH] - values[0]) > 0.1
    batch = collector_for(agent).collect(23, GAMMA, 0.0)
    counter = batch.features[:, 0].long()
    expected = 1.0 + GAMMA * values[counter + 1]  # V of the state that really followed
    if terminate:
        expected[counter == LENGTH - 1] = 1.0
    torch.testing.assert_close(batch.returns, expected, rtol=1e-5, atol=1e-5)


class TerminalWithoutLegalActionsEnv(MaskedDiscreteEnv):
    """MaskedDiscreteEnv whose episode terminates after 10 steps in a state with no legal
    action (as a finished board game): its info mask is all False."""

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        if truncated:
            return obs, reward, True, False, {"action_mask": np.zeros(self.n, dtype=bool)}
        return obs, reward, False, False, info


def test_terminal_state_without_legal_actions_trains_under_same_step():
    env = TerminalWithoutLegalActionsEnv()
    PPO(env, tiny_config(n_envs=1), seed=0).learn(64)
    assert len(env.actions_taken) == 64


def test_terminal_state_without_legal_actions_trains_under_next_step():
    vec = SyncVectorEnv([TerminalWithoutLegalActionsEnv for _ in range(2)])
    agent = PPO(vec, tiny_config(), seed=0)
    agent.learn(64)
    assert agent.num_timesteps == 64


# ---------------------------------------------------------------- other spaces
class MultiBinaryObsEnv(gym.Env):
    observation_space = gym.spaces.MultiBinary(4)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.integers(0, 2, 4).astype(np.int8), {}

    def step(self, action):
        self.t += 1
        return self.np_random.integers(0, 2, 4).astype(np.int8), float(action), False, self.t >= 5, {}


class StartActionEnv(gym.Env):
    """Discrete(3, start=-1) actions and a 2-D MultiDiscrete variant; asserts membership."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32)

    def __init__(self, action_space):
        self.action_space = action_space
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((2, 2), np.float32), {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype)), action
        self.t += 1
        return np.full((2, 2), self.t / 10, np.float32), 0.0, False, self.t >= 10, {}


def test_discrete_observations_are_one_hot_encoded_and_predict_takes_one_or_many():
    agent = PPO("FrozenLake-v1", tiny_config(), seed=0)
    agent.learn(64)
    assert agent.policy.features(np.array([3])).tolist() == [[0.0, 0.0, 0.0, 1.0] + [0.0] * 12]
    single = agent.predict(5, deterministic=True)
    assert np.ndim(single) == 0
    assert agent.predict(np.array([5, 5, 5]), deterministic=True).tolist() == [single] * 3


def test_multibinary_observations_train():
    agent = PPO(MultiBinaryObsEnv(), tiny_config(n_envs=1), seed=0)
    agent.learn(64)
    assert agent.num_timesteps == 64
    assert agent.predict(np.array([0, 1, 0, 1], np.int8)) in (0, 1)


@pytest.mark.parametrize(
    "space", [gym.spaces.Discrete(3, start=-1), gym.spaces.MultiDiscrete([[2, 3], [4, 2]])], ids=["start", "2-D"]
)
def test_discrete_start_and_2d_multidiscrete_actions_stay_in_the_space(space):
    env = StartActionEnv(space)  # asserts every action lies in its space
    agent = PPO(env, tiny_config(n_envs=1), seed=0)
    agent.learn(64)
    obs = np.random.default_rng(0).uniform(-1, 1, (50, 2, 2)).astype(np.float32)
    for deterministic in (True, False):
        actions = agent.predict(obs, deterministic=deterministic)
        assert all(space.contains(np.asarray(a, dtype=space.dtype)) for a in actions)
        assert space.contains(np.asarray(agent.predict(obs[0], deterministic=deterministic), dtype=space.dtype))
