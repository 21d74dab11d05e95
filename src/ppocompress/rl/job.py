"""`ppocompress rl`: train on a Gymnasium env, evaluate, and write the run's files; or
sweep its hyper-parameters and write the ranked trials and the best config."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ppocompress.cluster import check_address
from ppocompress.errors import UserError
from ppocompress.fileio import (
    atomic_write_text,
    output_dir,
    remove_leftovers,
    staging_dir,
)
from ppocompress.rl.config import EVALUATION_EPISODES, PPOConfig
from ppocompress.rl.envs import check_env_builds
from ppocompress.rl.evaluation import EVALUATION_SEED_OFFSET, evaluate
from ppocompress.rl.plots import plot_learning_curve
from ppocompress.rl.ppo import PPO
from ppocompress.rl.sweep import SweepResult, Trial, draw_trials, load_space, run_sweep
from ppocompress.terminal import stderr_progress

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


def _check_run(steps: int, seed: int, eval_episodes: int, env_id: str) -> None:
    if steps < 0:
        raise UserError(f"--steps must be >= 0, got {steps}")
    if eval_episodes < 1:
        raise UserError(f"--eval-episodes must be >= 1, got {eval_episodes}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    check_env_builds(env_id)


def train_and_export(
    env_id: str,
    steps: int,
    seed: int,
    out_dir: Path,
    config: PPOConfig,
    eval_episodes: int = EVALUATION_EPISODES,
    progress_bar: bool = True,
) -> TrainingSummary:
    """Everything is written to a hidden staging folder inside out_dir and moved into
    place only when the run has succeeded, so a failed run leaves no partial outputs."""
    _check_run(steps, seed, eval_episodes, env_id)
    with output_dir(out_dir):
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
        mean_return, std_return = evaluate(agent, env_id, episodes=eval_episodes, seed=seed + EVALUATION_SEED_OFFSET)
        agent.save(staging)
        episodes = agent._collector.episodes if agent._collector is not None else []
        plot_learning_curve(episodes, staging / "curve.png", f"PPO on {env_id} (seed {seed})")
        for name in OUTPUT_FILES:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TrainingSummary(env_id, agent.num_timesteps, seconds, mean_return, std_return, out_dir)


def sweep_and_export(env_id: str, kind: str, trials: int | None, space: Path | None, steps: int, seed: int, out_dir: Path,
                     base: PPOConfig, eval_episodes: int = EVALUATION_EPISODES, address: str | None = None,
                     progress_bar: bool = True) -> SweepResult:
    """Every trial is drawn and checked before Ray starts; sweep.csv (all trials, ranked)
    and best_config.json (a whole PPOConfig, for --config) appear only when all are done."""
    _check_run(steps, seed, eval_episodes, env_id)
    drawn = draw_trials(kind, load_space(kind, space), base, trials, seed)
    check_address(address)
    with output_dir(out_dir):
        remove_leftovers(out_dir)
        columns = (TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                   TimeElapsedColumn())
        with stderr_progress(*columns, disable=not progress_bar) as bar:
            task = bar.add_task("trials", total=len(drawn), best="")
            done: list[Trial] = []

            def show(trial: Trial) -> None:
                done.append(trial)
                best = max(t.mean_return for t in done)
                bar.update(task, completed=len(done), best=f"best return {best:.1f}")

            result = run_sweep(env_id, kind, drawn, base, steps, seed, eval_episodes, address, show)
        best = result.best_config()
        atomic_write_text(out_dir / "sweep.csv", result.csv())
        atomic_write_text(out_dir / "best_config.json", json.dumps(best.to_dict(), indent=2) + "\n")
    return result
