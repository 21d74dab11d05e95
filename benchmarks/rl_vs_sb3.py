"""Our PPO against Stable-Baselines3's PPO on CartPole-v1, same hyper-parameters.

Runs alternate (ours, SB3, SB3, ours, ...) in one process so both see the same machine
load; each run trains for --steps environment steps, then is scored over the same
deterministic evaluation episodes (EVALUATION_EPISODES, from EVAL_SEED). Prints a table
and the wall-time ratio ours/SB3.
Usage: python benchmarks/rl_vs_sb3.py [--steps 100000] [--seeds 3] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from ppocompress.fileio import atomic_write_text
from ppocompress.rl import PPO, PPOConfig, evaluate
from ppocompress.rl.config import EVALUATION_EPISODES

# rl-baselines3-zoo's tuned CartPole-v1 settings, written in both libraries' terms.
ZOO = dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0)
LEARNING_RATE, CLIP_RANGE = 1e-3, 0.2  # both linearly annealed to 0 ("lin_0.001", "lin_0.2")
EVAL_SEED = 10_000  # of the first evaluation episode, apart from the training seeds


def run_ours(seed: int, steps: int):
    config = PPOConfig(**ZOO, learning_rate=LEARNING_RATE, anneal_lr=True, clip_range=CLIP_RANGE, anneal_clip_range=True)
    start = time.perf_counter()
    agent = PPO("CartPole-v1", config, seed=seed).learn(steps)
    seconds = time.perf_counter() - start
    return seconds, evaluate(agent, "CartPole-v1", episodes=EVALUATION_EPISODES, seed=EVAL_SEED)[0]


def run_sb3(seed: int, steps: int):
    from stable_baselines3 import PPO as SB3PPO
    from stable_baselines3.common.env_util import make_vec_env

    start = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=ZOO["n_envs"], seed=seed)
    model = SB3PPO(
        "MlpPolicy",
        env,
        n_steps=ZOO["n_steps"],
        batch_size=ZOO["batch_size"],
        gae_lambda=ZOO["gae_lambda"],
        gamma=ZOO["gamma"],
        n_epochs=ZOO["n_epochs"],
        ent_coef=ZOO["ent_coef"],
        learning_rate=lambda remaining: remaining * LEARNING_RATE,
        clip_range=lambda remaining: remaining * CLIP_RANGE,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    model.learn(steps)
    seconds = time.perf_counter() - start

    class Predictor:  # evaluate() wants predict(obs, deterministic, action_mask) -> action
        def predict(self, obs, deterministic=True, action_mask=None):
            return model.predict(obs, deterministic=deterministic)[0]

    return seconds, evaluate(Predictor(), "CartPole-v1", episodes=EVALUATION_EPISODES, seed=EVAL_SEED)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # the same for both libraries
    # The first Adam in a process imports torch._dynamo, which is slow; pay it before timing.
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])

    rows = []
    for seed in range(args.seeds):
        # Alternate who goes first so neither always runs on a warmer (or busier) machine.
        order = [("ours", run_ours), ("sb3", run_sb3)]
        if seed % 2:
            order.reverse()
        result = {"seed": seed}
        for name, run in order:
            result[name] = run(seed, args.steps)
        rows.append(result)
        print(f"seed {seed}: ours {result['ours'][0]:.1f}s return {result['ours'][1]:.1f} | "
              f"sb3 {result['sb3'][0]:.1f}s return {result['sb3'][1]:.1f}", flush=True)

    ours_time = sum(r["ours"][0] for r in rows)
    sb3_time = sum(r["sb3"][0] for r in rows)
    lines = [
        f"# rl_vs_sb3 — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {platform.processor() or platform.machine()}, "
        f"{args.threads} torch thread(s), torch {torch.__version__}",
        f"# CartPole-v1, {args.steps} steps, rl-zoo hyper-parameters for both, "
        f"eval = {EVALUATION_EPISODES} deterministic episodes",
        f"{'seed':>4} {'ours_s':>8} {'ours_return':>12} {'sb3_s':>8} {'sb3_return':>11}",
    ]
    for r in rows:
        lines.append(f"{r['seed']:>4} {r['ours'][0]:>8.1f} {r['ours'][1]:>12.1f} {r['sb3'][0]:>8.1f} {r['sb3'][1]:>11.1f}")
    lines += [
        f"mean_return ours={statistics.mean(r['ours'][1] for r in rows):.1f} "
        f"sb3={statistics.mean(r['sb3'][1] for r in rows):.1f}",
        f"wall_time ours={ours_time:.1f}s sb3={sb3_time:.1f}s ratio_ours_over_sb3={ours_time / sb3_time:.2f} (target <= 0.5)",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        atomic_write_text(args.out, report)


if __name__ == "__main__":
    main()
