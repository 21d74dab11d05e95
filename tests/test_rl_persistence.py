"""save / load / CheckpointCallback / evaluate, and the config's JSON round trip."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ppocompress.errors import UserError
from ppocompress.rl import PPO, CheckpointCallback, PPOConfig, evaluate
from ppocompress.rl.distributions import DiagGaussian
from rl_toy_envs import (
    CounterEnv,
    DiscreteToyEnv,
    MaskedDiscreteEnv,
    MaskedMultiDiscreteEnv,
    MultiDiscreteStartEnv,
    tiny_config,
)

OBS_DIMS = {"CartPole-v1": 4, "RLToy/MultiDiscrete-v0": 3, "RLToy/Box-v0": 3}


def observations(env_id: str, n: int = 64) -> np.ndarray:
    return np.random.default_rng(5).uniform(-1, 1, (n, OBS_DIMS[env_id])).astype(np.float32)


def trained(env_id: str, **overrides) -> PPO:
    agent = PPO(env_id, tiny_config(**overrides), seed=0)
    agent.learn(128)
    return agent


@pytest.mark.parametrize("env_id", list(OBS_DIMS))
def test_load_reproduces_deterministic_actions_and_the_action_distribution(env_id, tmp_path):
    agent = trained(env_id, normalize_observations=True)
    agent.save(tmp_path)
    loaded = PPO.load(tmp_path)
    obs = observations(env_id)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True), agent.predict(obs, deterministic=True))
    with torch.no_grad():
        dist_a, value_a = agent.policy(agent.policy.features(obs))
        dist_b, value_b = loaded.policy(loaded.policy.features(obs))
    assert torch.equal(value_a, value_b)
    if isinstance(dist_a, DiagGaussian):
        assert torch.equal(dist_a.mean, dist_b.mean)
        assert torch.equal(dist_a.log_std, dist_b.log_std)
    else:
        assert all(torch.equal(a, b) for a, b in zip(dist_a.log_probs, dist_b.log_probs, strict=True))
    assert loaded.config == agent.config
    assert loaded.num_timesteps == agent.num_timesteps == 128
    assert loaded.kl_coef == agent.kl_coef


@pytest.mark.parametrize("env_id", list(OBS_DIMS))
def test_loaded_agent_continues_learning_with_an_env(env_id, tmp_path):
    agent = trained(env_id)
    agent.save(tmp_path)
    loaded = PPO.load(tmp_path, env=env_id)
    # the Adam moments came back too
    saved_moments, loaded_moments = agent.optimizer.per_parameter_state(), loaded.optimizer.per_parameter_state()
    assert saved_moments.keys() == loaded_moments.keys()
    assert saved_moments["0.step"].item() > 0
    for key, value in saved_moments.items():
        assert torch.equal(value, loaded_moments[key]), key
    history: list[dict] = []
    loaded.learn(64, callback=lambda _a, m: history.append(m))
    assert loaded.num_timesteps == 128 + 64
    assert np.isfinite(history[0]["policy_loss"])
    assert history[0]["first_ratio_deviation"] <= 1e-6


def test_loaded_agent_without_env_cannot_learn_until_set_env(tmp_path):
    trained("CartPole-v1").save(tmp_path)
    loaded = PPO.load(tmp_path)
    with pytest.raises(UserError, match="set_env"):
        loaded.learn(64)
    loaded.set_env("CartPole-v1")
    loaded.learn(64)
    assert loaded.num_timesteps == 192


def test_set_env_with_other_spaces_is_a_user_error(tmp_path):
    agent = trained("CartPole-v1")
    with pytest.raises(UserError, match="spaces differ"):
        agent.set_env("RLToy/Discrete-v0")


def test_save_writes_safetensors_and_json_only(tmp_path):
    agent = trained("CartPole-v1", scale_rewards=True)
    agent.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "training_state.safetensors",
    ]
    for name in ("model.safetensors", "training_state.safetensors"):
        raw = (tmp_path / name).read_bytes()
        assert not raw.startswith(b"\x80")  # a pickle stream
        assert not raw.startswith(b"PK")  # torch.save's zip container
        assert load_file(str(tmp_path / name))  # parses as safetensors
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["config"] == agent.config.to_dict()
    assert meta["num_timesteps"] == 128


def test_load_of_a_missing_directory_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        PPO.load(tmp_path / "nowhere")


def test_load_of_a_directory_without_an_agent_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(UserError, match="does not hold a saved PPO agent"):
        PPO.load(tmp_path)


def test_checkpoint_callback_saves_every_n_steps(tmp_path):
    directory = tmp_path / "ckpt"
    saved_at: list[int] = []
    checkpoint = CheckpointCallback(directory, every_steps=128)

    def callback(agent, metrics):
        checkpoint(agent, metrics)
        if (directory / "config.json").exists():
            saved_at.append(json.loads((directory / "config.json").read_text())["num_timesteps"])

    PPO("CartPole-v1", tiny_config(), seed=0).learn(320, callback=callback)  # 64 steps per update
    assert sorted(set(saved_at)) == [128, 256]
    assert PPO.load(directory).num_timesteps == 256
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_save_load_keeps_a_multidiscrete_start(tmp_path):
    agent = PPO(MultiDiscreteStartEnv(), tiny_config(n_envs=1), seed=0)
    agent.learn(64)  # the env asserts every action lies in MultiDiscrete([3, 2], start=[1, -1])
    agent.save(tmp_path)
    loaded = PPO.load(tmp_path)
    assert loaded.action_space == agent.action_space
    obs = np.random.default_rng(0).uniform(-1, 1, (32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True), agent.predict(obs, deterministic=True))


def test_config_round_trips_through_json(tmp_path):
    config = PPOConfig(hidden_sizes=(8, 4), target_kl=0.02, clip_range_vf=0.1, activation="relu")
    path = tmp_path / "ppo.json"
    path.write_text(json.dumps(config.to_dict()))
    assert PPOConfig.from_json_file(path) == config


@pytest.mark.parametrize(
    "bad", [{"n_steps": 0}, {"learning_rate": -1.0}, {"gamma": 1.5}, {"activation": "gelu"}, {"no_such_key": 1}]
)
def test_invalid_config_is_a_user_error(bad):
    with pytest.raises(UserError):
        PPOConfig.from_dict(bad)


# ---------------------------------------------------------------- evaluate
def test_evaluate_returns_mean_and_std_of_episode_returns():
    agent = PPO(CounterEnv(length=5, terminate=True), tiny_config(n_envs=1), seed=0)
    mean, std = evaluate(agent, CounterEnv(length=5, terminate=True), episodes=4)
    assert (mean, std) == (5.0, 0.0)
    assert isinstance(mean, float) and isinstance(std, float)


def test_evaluate_matches_a_hand_run_of_the_same_episodes():
    agent = PPO(DiscreteToyEnv(), tiny_config(n_envs=1), seed=0)
    with torch.no_grad():
        agent.policy.action_head.bias.copy_(torch.tensor([0.0, 0.001, 0.0]))  # mixed outcomes
    env = DiscreteToyEnv()
    returns = []
    for episode in range(6):
        obs, _ = env.reset(seed=10 + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.predict(obs, deterministic=True))
            total += reward
            done = terminated or truncated
        returns.append(total)
    assert np.std(returns) > 0
    assert evaluate(agent, DiscreteToyEnv(), episodes=6, seed=10) == pytest.approx((np.mean(returns), np.std(returns)))


def test_evaluate_accepts_an_env_id():
    agent = PPO("CartPole-v1", tiny_config(), seed=0)
    mean, std = evaluate(agent, "CartPole-v1", episodes=2)
    assert mean >= 1.0 and std >= 0.0


@pytest.mark.parametrize("mask_via", ["info", "method"])
@pytest.mark.parametrize("deterministic", [True, False])
def test_evaluate_honours_action_masks(mask_via, deterministic):
    agent = PPO(MaskedDiscreteEnv(mask_via), tiny_config(n_envs=1), seed=0)
    with torch.no_grad():
        agent.policy.action_head.bias[0] = 50.0  # action 0 is masked in 2/3 of the states
    env = MaskedDiscreteEnv(mask_via)
    mean, std = evaluate(agent, env, episodes=3, deterministic=deterministic)  # raises on a masked action
    assert len(env.actions_taken) == 3 * env.length
    assert 0.0 <= mean <= env.length


def test_evaluate_honours_a_concatenated_multidiscrete_mask():
    agent = PPO(MaskedMultiDiscreteEnv(), tiny_config(n_envs=1), seed=0)
    with torch.no_grad():
        agent.policy.action_head.bias[0] = 50.0
        agent.policy.action_head.bias[3] = 50.0
    mean, _ = evaluate(agent, MaskedMultiDiscreteEnv(), episodes=3)
    assert mean == 10.0  # reward 1 per legal step, 10 steps


def test_evaluate_with_a_wrapped_env_finds_the_action_masks_method():
    agent = PPO(MaskedDiscreteEnv("method"), tiny_config(n_envs=1), seed=0)
    with torch.no_grad():
        agent.policy.action_head.bias[0] = 50.0
    env = gym.wrappers.TimeLimit(MaskedDiscreteEnv("method"), max_episode_steps=50)
    evaluate(agent, env, episodes=2)
    assert len(env.unwrapped.actions_taken) == 2 * 10


@pytest.mark.parametrize(
    "space",
    [
        gym.spaces.Discrete(5, start=-2),
        gym.spaces.MultiDiscrete([3, 4]),
        gym.spaces.MultiDiscrete([[2, 3], [4, 2]]),
        pytest.param(
            gym.spaces.MultiDiscrete([3, 2], start=[1, -1])
        ),
        gym.spaces.MultiBinary(6),
        gym.spaces.Box(-1.0, 2.0, (3,), np.float32),
        gym.spaces.Box(np.array([0.0, -1.0]), np.array([1.0, 5.0]), dtype=np.float64),
        gym.spaces.Box(0, 255, (2, 3), np.uint8),
    ],
    ids=str,
)
def test_space_json_round_trip(space):
    from ppocompress.rl.spaces import space_from_json, space_to_json

    assert space_from_json(json.loads(json.dumps(space_to_json(space)))) == space


def test_config_json_is_standard_json(tmp_path):
    PPO("CartPole-v1", tiny_config(), seed=0).save(tmp_path)

    def reject(token):
        raise ValueError(f"non-standard JSON token {token}")

    json.loads((tmp_path / "config.json").read_text(), parse_constant=reject)


def test_reward_scaling_agent_continues_with_a_different_number_of_envs(tmp_path):
    trained("CartPole-v1", scale_rewards=True).save(tmp_path)
    vec = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(3)])
    loaded = PPO.load(tmp_path, env=vec)
    loaded.learn(96)
    assert loaded.num_timesteps == 128 + 96


def damage_config(directory):
    meta = json.loads((directory / "config.json").read_text())
    del meta["action_space"]
    (directory / "config.json").write_text(json.dumps(meta))


def damage_weights(directory):
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])


def damage_training_state(directory):
    from safetensors.torch import save_file

    state = load_file(str(directory / "training_state.safetensors"))
    state["adam.0.exp_avg"] = torch.zeros(3)  # moments of another network
    save_file(state, str(directory / "training_state.safetensors"))


def remove_training_state_key(directory):
    from safetensors.torch import save_file

    state = load_file(str(directory / "training_state.safetensors"))
    del state["adam.1.exp_avg_sq"]
    save_file(state, str(directory / "training_state.safetensors"))


@pytest.mark.parametrize("damage", [damage_config, damage_weights, damage_training_state, remove_training_state_key])
def test_load_of_a_damaged_agent_is_one_user_error_naming_the_directory(damage, tmp_path):
    trained("CartPole-v1").save(tmp_path)
    damage(tmp_path)
    with pytest.raises(UserError, match="is damaged") as caught:
        PPO.load(tmp_path)
    assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)
