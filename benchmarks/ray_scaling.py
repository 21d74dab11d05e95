"""Plan evaluations in this process against Ray workers (`compress --ray`), on all-MiniLM-L6-v2.

Three configurations, one after another on this machine: "local" (the plan evaluator in
this process, torch's default threads), and a local Ray cluster of 1 and of 2 CPUs (a
worker each). Each prepares from scratch (importance, the sensitivity table: batches of a
layer's levels) and runs PPO's search with the same seed and evaluations (a rollout's plans
scored as one batch). Reported per configuration: the sensitivity table's wall time and
evaluations/s, the search's wall time, the part of it spent waiting for plan scores, its
new evaluations and evaluations/s, and whether the evaluations equal the local run's
(same plans, same rewards).

    python benchmarks/ray_scaling.py [--evals 100] [--target 4] [--work DIR]

Writes benchmarks/results/ray_scaling.{txt,json}.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from ppocompress.cluster import connect
from ppocompress.search.evaluator import sensitivity_evaluations
from ppocompress.search.prepare import prepare
from ppocompress.search.searching import search
from ppocompress.search.settings import CompressSettings
from ppocompress.search.state import SearchState
from publish import publish


@dataclass
class Run:
    config: str
    workers: int  # processes scoring plans
    sensitivity_evaluations: int
    sensitivity_s: float
    search_evaluations: int
    search_s: float
    waiting_s: float  # of search_s, waiting for plan scores
    same_as_local: bool

    @property
    def sensitivity_rate(self) -> float:
        return self.sensitivity_evaluations / self.sensitivity_s

    @property
    def search_rate(self) -> float:
        return self.search_evaluations / self.waiting_s


class TimedScorer:
    """Wraps a scorer: how long the search waited for its plan scores."""

    def __init__(self, scorer):
        self.scorer, self.seconds = scorer, 0.0

    def qualities(self, plans, fidelity="low"):
        iterator = iter(self.scorer.qualities(plans, fidelity))
        for _ in plans:
            start = time.perf_counter()
            quality = next(iterator)
            self.seconds += time.perf_counter() - start
            yield quality


def run(config: str, workers: int | None, settings: CompressSettings, work: Path) -> tuple[Run, dict[str, float]]:
    folder = work / config
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    state = SearchState(asdict(settings))
    logged: list[tuple[float, str]] = []
    prepared = prepare(settings, state, lambda: None, lambda line: logged.append((time.monotonic(), line)), workers)
    started = next(t for t, line in logged if line.startswith("sensitivity of"))
    sensitivity_s = time.monotonic() - started  # the table, and the one baseline plan scored in this process
    sensitivity_plans = sensitivity_evaluations(len(prepared.scores), len(prepared.menu))
    timed = TimedScorer(prepared.scorer)
    prepared.scorer = timed
    start = time.monotonic()
    search(prepared, settings, state, folder / "state.json", folder / "policy", log=lambda _: None)
    search_s = time.monotonic() - start
    result = Run(config, workers or 1, sensitivity_plans, sensitivity_s, len(state.evaluations), search_s, timed.seconds,
                 same_as_local=False)
    return result, {"evaluations": state.evaluations, "sensitivity": state.measurements.sensitivity}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=100)
    parser.add_argument("--target", type=float, default=4.0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-ray-scaling"))
    args = parser.parse_args()
    settings = CompressSettings(target_speedup=args.target, evals=args.evals, cost="flops", runtime="onnxruntime",
                                baselines=False, recovery="lsq", seed=0)
    runs: list[Run] = []
    local_measures = None
    for config, cpus in (("local", None), ("ray-1", 1), ("ray-2", 2)):
        print(f"{config}...", flush=True)
        if cpus is None:
            result, measures = run(config, None, settings, args.work)
            local_measures = measures
        else:
            with connect("local", num_cpus=cpus) as workers:
                result, measures = run(config, workers, settings, args.work)
        result.same_as_local = measures == local_measures
        runs.append(result)
    lines = [
        f"# ray_scaling — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s) in this process",
        f"# all-MiniLM-L6-v2, onnxruntime int8 priced, lsq, PPO at {args.target:g}x (FLOPs cost), {args.evals} evaluations, "
        f"seed 0",
        f"{'config':<7} {'workers':>7} {'sens_s':>7} {'sens_ev/s':>9} {'search_s':>8} {'waiting_s':>9} {'evals':>5} "
        f"{'search_ev/s':>11}  same_plans",
    ]
    for r in runs:
        lines.append(f"{r.config:<7} {r.workers:>7} {r.sensitivity_s:>7.1f} {r.sensitivity_rate:>9.2f} {r.search_s:>8.1f} "
                     f"{r.waiting_s:>9.1f} {r.search_evaluations:>5} {r.search_rate:>11.2f}  {r.same_as_local}")
    local = runs[0]
    for r in runs[1:]:
        lines.append(f"{r.config}: sensitivity {local.sensitivity_s / r.sensitivity_s:.2f}x, "
                     f"search {local.search_s / r.search_s:.2f}x "
                     f"the local run's speed (evaluations/s {r.search_rate / local.search_rate:.2f}x)")
    publish("ray_scaling", "\n".join(lines), [asdict(r) | {"sensitivity_rate": r.sensitivity_rate, "search_rate": r.search_rate}
                                              for r in runs])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
