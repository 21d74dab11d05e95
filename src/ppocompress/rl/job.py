"""`ppocompress rl`: train on a Gymnasium env, evaluate, and write the run's files."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ppocompress.errors import UserError
from ppocompress.fileio import remove_leftovers, run_lock, staging_dir, writable_dir
from ppocompress.rl.config import PPOConfig
from ppocompress.rl.envs import check_env_id
from ppocompress.rl.evaluation import evaluate
from ppocompress.rl.plots import plot_learning_curve
from ppocompress.rl.ppo import PPO

OUTPUT_FILES = ("metrics.csv", "model.safetensors", "training_state.safetensors", "config.json", "curve.png")


@dataclass
class TrainingSummary:
    env_id: str
    steps: int
    seconds: float
    mean_return: float
    std_return: float
    out_dir: Path

    def line(self) -> str:
        return (
            f"done env={self.env_id} steps={self.steps} seconds={self.seconds:.1f} "
            f"mean_return={self.mean_return:.2f} std_return={self.std_return:.2f} out={self.out_dir}"
        )


def train_and_export(
    env_id: str,
    steps: int,
    seed: int,
    out_dir: Path,
    config: PPOConfig,
    eval_episodes: int = 20,
    progress_bar: bool = True,
) -> TrainingSummary:
    """Everything is written to a hidden staging folder inside out_dir and moved into
    place only when the run has succeeded, so a failed run leaves no partial outputs."""
    if steps < 0:
        raise UserError(f"--steps must be >= 0, got {steps}")
    if eval_episodes < 1:
        raise UserError(f"--eval-episodes must be >= 1, got {eval_episodes}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    check_env_id(env_id)
    writable_dir(out_dir)
    with run_lock(out_dir):
        remove_leftovers(out_dir)  # of a run killed before it could clean up
        return _train(env_id, steps, seed, out_dir, config, eval_episodes, progress_bar)


def _train(env_id: str, steps: int, seed: int, out_dir: Path, config: PPOConfig, eval_episodes: int,
           progress_bar: bool) -> TrainingSummary:
    staging = staging_dir(out_dir)
    try:
        started = time.perf_counter()
        agent = PPO(env_id, config, seed=seed)
        agent.learn(steps, progress_bar=progress_bar, log_csv=staging / "metrics.csv")
        seconds = time.perf_counter() - started
        mean_return, std_return = evaluate(agent, env_id, episodes=eval_episodes, seed=seed + 1_000_000)
        agent.save(staging)
        episodes = agent._collector.episodes if agent._collector is not None else []
        plot_learning_curve(episodes, staging / "curve.png", f"PPO on {env_id} (seed {seed})")
        for name in OUTPUT_FILES:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TrainingSummary(env_id, agent.num_timesteps, seconds, mean_return, std_return, out_dir)
