"""The speed / quality frontier of delivered encoders, searcher against searcher.

For each model: one family run (`ppocompress compress --target-int8-speedups ...`: PPO over
every target with one policy, the evolutionary, uniform, random and estimate-only
searchers per target, all on the same evaluations), delivered once per recovery (least
squares; least squares then distillation). Every searcher's plan at every target is
recovered, exported for the serving runtime, judged on held-out text (cosine to the dense
embeddings, neighbour recall@10 over the held-out corpus, the labelled task) and timed
with dense PyTorch fp32 and dense int8 in the same interleaved rounds: what `compress`
delivers, measured as it measures it. A model's second recovery resumes from the first
run's search (its state, with the recovery changed), so both recover the same plans, and
only delivery is run again.

    python benchmarks/frontier.py [--models all-MiniLM-L6-v2,mpnet] [--targets 1.1,1.25,1.5,2]
                                  [--recoveries lsq,lsq+distill] [--recover-minutes 2]
                                  [--seeds 0] [--work runs/frontier] [--results frontier]

Each run keeps its state in --work/<model>-<recovery>-seed<seed>, so an interrupted
benchmark resumes where it stopped. Writes benchmarks/results/<results>.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from ppocompress.search.files import POLICY_DIR, STATE_FILE, TARGET_SET_FILE
from ppocompress.search.job import run_compress
from ppocompress.search.results import CompressResult, MeasuredModel, TargetSetResult
from ppocompress.search.settings import FLOOR_INT8_SPEEDUPS, CompressSettings
from publish import publish

QUALITY_LEVELS = (0.99, 0.98, 0.97, 0.95)  # the fastest point keeping each is reported


@dataclass
class Point:
    """One delivered model of one run, measured."""

    model: str
    recovery: str
    seed: int
    target: str  # the target's label
    name: str  # the searcher, or "dense int8"
    speedup: float  # against dense PyTorch fp32, same rounds
    vs_int8: float  # against dense int8 on the serving runtime, same rounds
    cosine: float  # held-out
    neighbour_recall: float
    task_recall: float
    task_mrr: float
    predicted_speedup: float | None  # the latency table's, a searcher's plan only

    @classmethod
    def measured(cls, model: str, recovery: str, seed: int, result: CompressResult, measured: MeasuredModel) -> Point:
        return cls(model, recovery, seed, result.target.label, measured.name, measured.speedup,
                   measured.speedup_vs_dense_int8, measured.cosine_heldout, measured.neighbour_recall_at_10,
                   measured.task_recall_at_10, measured.task_mrr, measured.predicted_speedup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all-MiniLM-L6-v2", help="comma-separated: all-MiniLM-L6-v2, mpnet, ...")
    parser.add_argument("--targets", default=",".join(map(str, FLOOR_INT8_SPEEDUPS)))
    parser.add_argument("--recoveries", default="lsq,lsq+distill")
    parser.add_argument("--recover-minutes", type=float, default=2.0)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--evals", type=int, default=None, help="per searcher over the family; default compress's")
    parser.add_argument("--work", type=Path, default=Path("runs/frontier"))
    parser.add_argument("--results", default="frontier")
    args = parser.parse_args()
    targets = [float(value) for value in args.targets.split(",")]
    points, runs = [], []
    for model in args.models.split(","):
        for seed in map(int, args.seeds.split(",")):
            searched = None  # the first recovery's run, whose search the others resume from
            for recovery in args.recoveries.split(","):
                settings = CompressSettings(model=model, target_set_int8_speedups=targets, recovery=recovery,
                                            recover_minutes=args.recover_minutes, seed=seed, evals=args.evals)
                out = args.work / f"{model}-{recovery.replace('+', '-')}-seed{seed}"
                family = _run(settings, out, searched)
                searched = searched or out
                runs.append({"model": model, "seed": seed, "recovery": recovery, "runtime": family.members[0].runtime,
                             "searched_by": None if out == searched else searched.name,
                             "evaluations": family.evaluations,
                             "minutes": {phase: seconds / 60 for phase, seconds in family.members[-1].run_seconds.items()}})
                for result in family.members:
                    for measured in [*result.searchers.values(), result.dense_int8]:
                        points.append(Point.measured(model, recovery, seed, result, measured))
    publish(args.results, _text(points, runs, args), {"runs": runs, "points": [asdict(p) for p in points],
                                                      "recover_minutes": args.recover_minutes})


def _run(settings: CompressSettings, out: Path, searched: Path | None) -> TargetSetResult:
    """The family run in `out`: read if it finished, resumed if it was interrupted, else
    started from the search in `searched` (None: a search of its own)."""
    if not (out / TARGET_SET_FILE).exists():
        if searched is not None and not (out / STATE_FILE).exists():
            state = json.loads((searched / STATE_FILE).read_text())
            state["settings"] = asdict(settings)  # what --resume checks: the same search, another recovery
            out.mkdir(parents=True, exist_ok=True)
            (out / STATE_FILE).write_text(json.dumps(state))
            shutil.copytree(searched / POLICY_DIR, out / POLICY_DIR, dirs_exist_ok=True)
        run_compress(settings, out, resume=(out / STATE_FILE).exists(), log=lambda line: print(line, flush=True))
    return TargetSetResult.from_dir(out)


def _text(points: list[Point], runs: list[dict], args) -> str:
    distills = "distill" in args.recoveries
    lines = [f"Frontier: targets {args.targets} (x dense int8), recoveries {args.recoveries}"
             + (f" (distillation {args.recover_minutes:g} min a plan)" if distills else "") + f", seeds {args.seeds}. "
             "Dense int8 is timed again in each target's rounds.", ""]
    for run in runs:
        minutes = ", ".join(f"{phase} {value:.1f}" for phase, value in run["minutes"].items())
        lines.append(f"{run['model']} seed {run['seed']} {run['recovery']}: served on {run['runtime']}; minutes: {minutes}"
                     + (f" (preparation and search: {run['searched_by']}'s)" if run["searched_by"] else ""))
    by_group: dict[tuple[str, str], list[Point]] = {}
    for point in points:
        by_group.setdefault((point.model, point.recovery), []).append(point)
    for (model, recovery), group in by_group.items():
        lines += ["", f"{model}, {recovery} (mean over seeds): measured speedups, held-out quality",
                  f"{'target':<12}{'model':<14}{'x fp32':>8}{'x int8':>8}{'cosine':>8}{'nbr@10':>8}{'task@10':>8}"
                  f"{'MRR':>7}"]
        for (target, name), same in _by(group, lambda p: (p.target, p.name)).items():
            lines.append(f"{target:<12}{name:<14}{_mean(same, 'speedup'):>7.2f}x{_mean(same, 'vs_int8'):>7.2f}x"
                         f"{_mean(same, 'cosine'):>8.4f}{_mean(same, 'neighbour_recall'):>8.3f}"
                         f"{_mean(same, 'task_recall'):>8.3f}{_mean(same, 'task_mrr'):>7.3f}")
        lines.append("Best held-out cosine per target (searchers only): " + "; ".join(
            f"{target} {max(same, key=lambda p: p.cosine).name}"
            for target, same in _by([p for p in group if p.name != "dense int8"], lambda p: p.target).items()))
        int8 = [p for p in group if p.name == "dense int8"]
        lines.append(f"dense int8, over every target's rounds: {_mean(int8, 'speedup'):.2f}x fp32, held-out cosine "
                     f"{_mean(int8, 'cosine'):.4f}, nbr@10 {_mean(int8, 'neighbour_recall'):.3f}")
        for level in QUALITY_LEVELS:
            kept = [p for p in group if p.name != "dense int8" and p.cosine >= level]
            fastest = max(kept, key=lambda p: p.speedup, default=None)
            lines.append(f"fastest plan at held-out cosine >= {level}: " + (
                "none" if fastest is None else
                f"{fastest.name} at {fastest.target}, {fastest.speedup:.2f}x fp32, {fastest.vs_int8:.2f}x int8 "
                f"(cosine {fastest.cosine:.4f}, seed {fastest.seed})"))
    return "\n".join(lines)


def _by(points: list[Point], key) -> dict:
    grouped: dict = {}
    for point in points:
        grouped.setdefault(key(point), []).append(point)
    return grouped


def _mean(points: list[Point], field: str) -> float:
    return statistics.fmean(getattr(point, field) for point in points)


if __name__ == "__main__":
    main()
