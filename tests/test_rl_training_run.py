"""Whole learn() runs: seeding, callbacks, the CSV log and the progress bar."""

import csv

import numpy as np
import pytest
import torch

from ppocompress.errors import UserError
from ppocompress.rl import PPO
from ppocompress.rl.logger import METRIC_COLUMNS
from rl_toy_envs import tiny_config


def seeded_run(seed: int, global_seed: int):
    # Scramble the global generators: the agent must depend on its own seed only.
    torch.manual_seed(global_seed)
    np.random.seed(global_seed)
    agent = PPO("CartPole-v1", tiny_config(), seed=seed)
    history: list[dict] = []
    agent.learn(320, callback=lambda _a, m: history.append(dict(m)))
    metrics = np.array([[m[k] for k in METRIC_COLUMNS if k != "steps_per_second"] for m in history])
    return metrics, [p.detach().clone() for p in agent.policy.parameters()]


def test_same_seed_gives_identical_metrics_and_parameters():
    metrics_a, params_a = seeded_run(seed=7, global_seed=1)
    metrics_b, params_b = seeded_run(seed=7, global_seed=2)
    assert metrics_a.shape == (5, len(METRIC_COLUMNS) - 1)
    np.testing.assert_array_equal(metrics_a, metrics_b)  # nan == nan here
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))


def test_different_seeds_give_different_metrics_and_parameters():
    metrics_a, params_a = seeded_run(seed=0, global_seed=1)
    metrics_b, params_b = seeded_run(seed=1, global_seed=1)
    assert not np.array_equal(metrics_a, metrics_b)
    assert all(not torch.equal(a, b) for a, b in zip(params_a, params_b))


def test_callback_returning_false_stops_training():
    agent = PPO("CartPole-v1", tiny_config(), seed=0)
    calls: list[int] = []

    def stop_after_two(_agent, metrics):
        calls.append(metrics["update"])
        return len(calls) < 2

    agent.learn(640, callback=stop_after_two)
    assert calls == [1, 2]
    assert agent.num_timesteps == 128


def test_learn_rounds_up_to_whole_rollouts_and_accumulates_steps():
    agent = PPO("CartPole-v1", tiny_config(), seed=0)
    agent.learn(65)  # 64 steps per rollout -> 2 rollouts
    assert agent.num_timesteps == 128
    agent.learn(64)
    assert agent.num_timesteps == 192


def test_negative_total_steps_is_a_user_error():
    with pytest.raises(UserError):
        PPO("CartPole-v1", tiny_config(), seed=0).learn(-1)


def test_log_csv_has_every_metric_column_and_one_row_per_update(tmp_path):
    path = tmp_path / "log.csv"
    PPO("CartPole-v1", tiny_config(), seed=0).learn(192, log_csv=path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == METRIC_COLUMNS
        rows = list(reader)
    assert [row["update"] for row in rows] == ["1", "2", "3"]
    assert [row["steps"] for row in rows] == ["64", "128", "192"]
    for row in rows:
        assert all(row[column] != "" for column in METRIC_COLUMNS)
        assert float(row["first_ratio_deviation"]) <= 1e-6


def test_progress_bar_run_completes(capsys):
    agent = PPO("CartPole-v1", tiny_config(), seed=0)
    agent.learn(128, progress_bar=True)
    assert agent.num_timesteps == 128
