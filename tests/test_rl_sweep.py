"""Hyper-parameter sweeps: the trials drawn (grid and random, seeded), the space file, the
ranking and its files, and a real sweep on a local Ray cluster whose trials train exactly
as they would outside Ray."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ppocompress.cli import main
from ppocompress.errors import UserError
from ppocompress.rl.config import PPOConfig
from ppocompress.rl.presets import config_for
from ppocompress.rl.sweep import (
    DEFAULT_SPACE,
    Setting,
    SweepResult,
    Trial,
    draw_trials,
    grid_size,
    load_space,
    train_trial,
)
from ray_cluster import two_node_cluster

BASE = config_for("CartPole-v1")


def test_the_grid_is_every_combination_once():
    space = (Setting("learning_rate", values=(1e-4, 1e-3)), Setting("n_epochs", values=(4, 10, 20)))
    drawn = draw_trials("grid", space, BASE, None, seed=0)
    assert grid_size(space) == 6 and len(drawn) == 6
    assert {(d["learning_rate"], d["n_epochs"]) for d in drawn} == {(a, b) for a in (1e-4, 1e-3) for b in (4, 10, 20)}
    assert grid_size(DEFAULT_SPACE["grid"]) == 324


def test_random_trials_repeat_with_the_seed_and_stay_in_their_ranges():
    space = load_space("random")
    first = draw_trials("random", space, BASE, 50, seed=3)
    assert first == draw_trials("random", space, BASE, 50, seed=3)
    assert first != draw_trials("random", space, BASE, 50, seed=4)
    ranges = {s.name: s for s in space}
    for trial in first:
        for name, value in trial.items():
            setting = ranges[name]
            if setting.values:
                assert value in setting.values
            else:
                assert setting.low <= value <= setting.high
        assert isinstance(trial["n_epochs"], int) and isinstance(trial["learning_rate"], float)
    rates = sorted(t["learning_rate"] for t in first)
    assert rates[len(rates) // 2] < math.sqrt(1e-5 * 3e-3) * 3  # log-uniform: the median sits near the geometric mean


def test_a_space_file_replaces_only_the_settings_it_names(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"n_epochs": [5], "learning_rate": {"low": 1e-4, "high": 1e-3, "log": True},
                                "gamma": [0.9, 0.99]}))
    space = {s.name: s for s in load_space("random", path)}
    assert space["n_epochs"] == Setting("n_epochs", values=(5,))
    assert space["learning_rate"] == Setting("learning_rate", low=1e-4, high=1e-3, log=True)
    assert space["gamma"].values == (0.9, 0.99)
    assert space["clip_range"] == next(s for s in DEFAULT_SPACE["random"] if s.name == "clip_range")


def test_a_log_range_must_be_positive(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"ent_coef": {"low": 0.0, "high": 0.1, "log": True}}))
    with pytest.raises(UserError, match="log-scaled, so low must be > 0"):
        load_space("random", path)


def _result() -> SweepResult:
    trials = [Trial(0, {"learning_rate": 1e-3, "n_epochs": 4}, 200.0, 5.0, 10.0),
              Trial(1, {"learning_rate": 3e-4, "n_epochs": 10}, 500.0, 0.0, 30.0),
              Trial(2, {"learning_rate": 1e-4, "n_epochs": 20}, error="ValueError: diverged"),
              Trial(3, {"learning_rate": 2e-4, "n_epochs": 10}, 500.0, 0.0, 20.0)]
    return SweepResult("CartPole-v1", "random", 1000, 0, BASE, trials)


def test_trials_rank_by_return_then_spread_then_time_with_failures_last():
    result = _result()
    assert [t.index for t in result.ranked()] == [3, 1, 0, 2]
    best = result.best_config()
    assert best.learning_rate == 2e-4 and best.n_epochs == 10 and best.n_envs == BASE.n_envs


def test_the_csv_holds_every_trial_ranked_and_the_table_fits_80_columns():
    result = _result()
    rows = list(csv.DictReader(result.csv().splitlines()))
    assert [row["trial"] for row in rows] == ["3", "1", "0", "2"]
    assert rows[-1]["error"] == "ValueError: diverged" and rows[0]["learning_rate"] == "0.0002"
    table = result.table()
    assert all(len(line) <= 80 for line in table.splitlines()) and "failed" in table


def test_every_trial_failing_is_a_user_error():
    result = SweepResult("CartPole-v1", "grid", 10, 0, BASE, [Trial(0, {}, error="boom")])
    with pytest.raises(UserError, match="every trial failed; the first: boom"):
        result.best_config()


def test_without_ray_a_sweep_says_how_to_install_it(without_ray, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["rl", "CartPole-v1", "--sweep", "random", "--trials", "1", "--steps", "64", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: Ray is not installed; pip install 'ppocompress[ray]', or run without Ray"
    assert not out.exists()


def test_a_sweep_on_a_local_ray_cluster_writes_ranked_trials_and_a_usable_best_config(tmp_path, capsys):
    out = tmp_path / "sweep"
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"n_steps": [16, 32], "n_epochs": [2], "learning_rate": [1e-3], "clip_range": [0.2],
                                 "ent_coef": [0.0], "gae_lambda": [0.9]}))
    args = ["rl", "CartPole-v1", "--sweep", "grid", "--space", str(space), "--steps", "512", "--eval-episodes", "2",
            "--no-progress", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = printed.split("\nwrote ")[0]
    assert "grid sweep of 2 trials on CartPole-v1" in table and all(len(line) <= 80 for line in table.splitlines())
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert sorted(row["n_steps"] for row in rows) == ["16", "32"] and not any(row["error"] for row in rows)
    for row in rows:  # a trial on Ray trains exactly as the same settings do here
        config = PPOConfig.from_dict({**BASE.to_dict(), "n_steps": int(row["n_steps"]), "n_epochs": 2, "learning_rate": 1e-3,
                                      "clip_range": 0.2, "ent_coef": 0.0, "gae_lambda": 0.9})
        mean_return, std_return, _ = train_trial("CartPole-v1", config, 512, 0, 2)
        assert float(row["mean_return"]) == mean_return and float(row["std_return"]) == std_return
    best = json.loads((out / "best_config.json").read_text())
    assert best["n_steps"] == int(rows[0]["n_steps"]) and PPOConfig.from_dict(best).n_envs == BASE.n_envs
    assert main(["rl", "CartPole-v1", "--config", str(out / "best_config.json"), "--steps", "64", "--eval-episodes", "1",
                 "--no-progress", "--out", str(tmp_path / "again")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["best_config.json", "sweep.csv"]


def test_a_table_of_many_settings_still_fits_80_columns():
    settings = {name: 0.000123 for name in ("learning_rate", "clip_range", "ent_coef", "gae_lambda", "gamma", "vf_coef",
                                            "max_grad_norm", "target_kl")}
    result = SweepResult("LunarLander-v3", "random", 100_000, 0, BASE, [Trial(0, settings, 123.4, 56.7, 1234.0)])
    table = result.table()
    assert all(len(line) <= 80 for line in table.splitlines())
    assert table.splitlines()[-1] == "(and max_grad_norm, target_kl: see sweep.csv)"


@pytest.mark.slow
def test_a_sweep_on_a_two_node_cluster_gives_the_local_results(tmp_path):
    """A head and a second node started with `ray start` in their own processes, as on two
    machines; the sweep joins them with --ray and its trials return what they do here."""
    import subprocess
    import sys

    with two_node_cluster() as (address, env):
        space = tmp_path / "space.json"
        space.write_text(json.dumps({"n_steps": [16, 32], "n_epochs": [2], "learning_rate": [1e-3], "clip_range": [0.2],
                                     "ent_coef": [0.0], "gae_lambda": [0.9]}))
        out = tmp_path / "sweep"
        run = subprocess.run([sys.executable, "-m", "ppocompress.cli", "rl", "CartPole-v1", "--sweep", "grid",
                              "--space", str(space), "--steps", "512", "--eval-episodes", "2", "--no-progress", "--ray", address,
                              "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
    rows = {int(row["n_steps"]): row for row in csv.DictReader((out / "sweep.csv").read_text().splitlines())}
    for n_steps, row in rows.items():
        config = PPOConfig.from_dict({**BASE.to_dict(), "n_steps": n_steps, "n_epochs": 2, "learning_rate": 1e-3,
                                      "clip_range": 0.2, "ent_coef": 0.0, "gae_lambda": 0.9})
        assert (float(row["mean_return"]), float(row["std_return"])) == train_trial("CartPole-v1", config, 512, 0, 2)[:2]
