"""A random sweep of PPO on CartPole-v1 on a local Ray cluster: 16 trials of 100k steps
over the default random space (learning rate, clip range, rollout length, entropy
coefficient, GAE lambda, epochs), the rest from the CartPole preset, ranked by the
deterministic evaluation return. Does the best trial reach 475 within 100k steps?

    python benchmarks/sweep_cartpole.py [--trials 16] [--steps 100000] [--seed 0]

Writes benchmarks/results/sweep_cartpole.{txt,json}; the trials' files go to --out.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict
from pathlib import Path

from ppocompress.rl.job import sweep_and_export
from ppocompress.rl.presets import config_for
from publish import publish

SOLVED = 475.0  # CartPole-v1's reward threshold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-sweep"))
    args = parser.parse_args()
    started = time.perf_counter()
    result = sweep_and_export("CartPole-v1", "random", args.trials, None, args.steps, args.seed, args.out,
                              config_for("CartPole-v1"))
    wall = time.perf_counter() - started
    ranked = result.ranked()
    solved = [t for t in ranked if t.error is None and t.mean_return >= SOLVED]
    training = sum(t.seconds for t in ranked if t.error is None)
    lines = [result.table(rows=args.trials),
             f"{len(solved)} of {len(ranked)} trials reach {SOLVED:g} (the best: {ranked[0].mean_return:.1f}); "
             f"wall {wall / 60:.1f} min on {os.cpu_count()} CPUs for {training / 60:.1f} min of training"]
    publish("sweep_cartpole", "\n".join(lines), {"trials": [asdict(t) for t in ranked], "wall_seconds": wall,
                                                 "steps": args.steps, "seed": args.seed, "solved": len(solved)})


if __name__ == "__main__":
    main()
