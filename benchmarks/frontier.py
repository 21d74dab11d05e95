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

With --policy (a family run's saved policy, e.g. MiniLM's), the policy is also transferred
to each other model, recovered by the first recovery: "zero-shot", its plan for each target with
one evaluation a target (improved on the model's own one-off estimate, as compress does),
and "continued", a short search from it (--transfer-evals in all), PPO's plans only. They
reuse the dedicated run's one-off measurements (the same model and text: the same numbers),
not its scored plans.

    python benchmarks/frontier.py [--models all-MiniLM-L6-v2,mpnet] [--targets 1.1,1.25,1.5,2]
                                  [--recoveries lsq,lsq+distill] [--recover-minutes 2]
                                  [--seeds 0] [--work runs/frontier] [--results frontier]
                                  [--policy DIR] [--transfer-evals 100]

Each run keeps its state in --work/<model>-<recovery>-seed<seed>, so an interrupted
benchmark resumes where it stopped. Writes benchmarks/results/<results>.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ppocompress.search.deliver import DENSE_INT8
from ppocompress.search.files import POLICY_DIR, STATE_FILE, TARGET_SET_FILE
from ppocompress.search.job import run_compress
from ppocompress.search.results import CompressResult, MeasuredModel, TargetSetResult
from ppocompress.search.searchers import DEFAULT_SEARCHER
from ppocompress.search.settings import FLOOR_INT8_SPEEDUPS, CompressSettings
from publish import publish

QUALITY_LEVELS = (0.99, 0.98, 0.97, 0.95)  # the fastest point keeping each is reported
TRANSFERS = ("zero-shot", "continued")  # the --policy runs: one evaluation a target, and a short search


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
    parser.add_argument("--policy", type=Path, default=None, help="a family run's policy folder, transferred to each model")
    parser.add_argument("--transfer-evals", type=int, default=100, help="the continued search's, over the family")
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
                _record(points, runs, settings, family, searched_by=None if searched is None else searched.name)
                searched = searched or out
            if args.policy is not None and model != _policy_model(args.policy):
                _transfer(points, runs, args, targets, model, seed, searched)
    publish(args.results, _text(points, runs, args), {"runs": runs, "points": [asdict(p) for p in points],
                                                      "recover_minutes": args.recover_minutes})


def _record(points: list[Point], runs: list[dict], settings: CompressSettings, family: TargetSetResult,
            searched_by: str | None = None, transfer: str | None = None) -> None:
    """The run's line and its delivered models' points; a transfer's are its searcher's plans
    alone, named for it (its dense int8 timings would weigh its model's dense int8 rows)."""
    shared = family.members[-1].run_seconds  # preparation and search: the last member's, totals after every resume
    minutes = {phase: seconds / 60 for phase, seconds in shared.items() if phase != "delivery"}
    minutes["delivery"] = sum(member.run_seconds.get("delivery", 0.0) for member in family.members) / 60
    runs.append({"model": settings.model, "seed": settings.seed, "recovery": settings.recovery,
                 "runtime": family.members[0].runtime, "searched_by": searched_by, "transfer": transfer,
                 "evaluations": family.evaluations, "minutes": minutes})
    for result in family.members:
        if transfer is not None:
            point = Point.measured(settings.model, settings.recovery, settings.seed, result, result.delivered)
            points.append(replace(point, name=transfer))
            continue
        for measured in [*result.searchers.values(), result.dense_int8]:
            points.append(Point.measured(settings.model, settings.recovery, settings.seed, result, measured))


def _policy_model(policy: Path) -> str | None:
    """The model the policy was searched on (its run's state), if the policy is in a run's
    folder. Transferred to that model, it would find the plans its run scored, free: no
    transfer."""
    state = policy.parent / STATE_FILE
    return json.loads(state.read_text())["settings"]["model"] if state.is_file() else None


def _transfer(points: list[Point], runs: list[dict], args, targets: list[float], model: str, seed: int,
              searched: Path) -> None:
    """The --policy transferred to `model`: zero-shot, and a short search continued from it,
    each with the one-off measurements of the dedicated run in `searched` (by the first
    recovery, which they recover by)."""
    recovery = args.recoveries.split(",")[0]
    for name, evals in zip(TRANSFERS, (len(targets), args.transfer_evals)):
        settings = CompressSettings(model=model, target_set_int8_speedups=targets, recovery=recovery,
                                    recover_minutes=args.recover_minutes, seed=seed, evals=evals, baselines=False,
                                    policy=str(args.policy))
        out = args.work / f"{model}-{recovery.replace('+', '-')}-seed{seed}-{name}"
        _record(points, runs, settings, _run(settings, out, searched, own_search=True), transfer=name)


def _run(settings: CompressSettings, out: Path, searched: Path | None, own_search: bool = False) -> TargetSetResult:
    """The family run in `out`: read if it finished, resumed if it was interrupted, else
    started from the run in `searched` (None: nothing): its search (another recovery of
    the same plans), or with own_search only its one-off measurements."""
    if not (out / TARGET_SET_FILE).exists():
        if searched is not None and not (out / STATE_FILE).exists():
            state = json.loads((searched / STATE_FILE).read_text())
            state["settings"] = asdict(settings)  # what --resume checks
            if own_search:
                state.update(evaluations={}, finished={})
                state["measurements"]["run_seconds"] = {}
            out.mkdir(parents=True, exist_ok=True)
            (out / STATE_FILE).write_text(json.dumps(state))
            if not own_search:
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
        evaluations = ", ".join(f"{name} {count}" for name, count in run["evaluations"].items())
        lines.append(f"{run['model']} seed {run['seed']} {run['recovery']}"
                     + (f" {run['transfer']} from {args.policy}" if run.get("transfer") else "")
                     + f": served on {run['runtime']}; evaluations: {evaluations}; minutes: {minutes}"
                     + (f" (preparation and search: {run['searched_by']}'s)" if run["searched_by"] else "")
                     + (" (one-off measurements: the dedicated run's)" if run.get("transfer") else ""))
    by_group: dict[tuple[str, str], list[Point]] = {}
    for point in points:
        by_group.setdefault((point.model, point.recovery), []).append(point)
    for (model, recovery), group in by_group.items():
        lines += ["", f"{model}, {recovery} (mean over seeds): measured speedups, held-out quality",
                  f"{'target':<12}{'model':<14}{'x fp32':>8}{'x int8':>8}{'cosine':>8}{'nbr@10':>8}{'task@10':>8}"
                  f"{'MRR':>7}"]
        order = list(dict.fromkeys(p.target for p in group))  # a transfer's rows beside its target's others
        for (target, name), same in _by(sorted(group, key=lambda p: order.index(p.target)),
                                        lambda p: (p.target, p.name)).items():
            lines.append(f"{target:<12}{name:<14}{_mean(same, 'speedup'):>7.2f}x{_mean(same, 'vs_int8'):>7.2f}x"
                         f"{_mean(same, 'cosine'):>8.4f}{_mean(same, 'neighbour_recall'):>8.3f}"
                         f"{_mean(same, 'task_recall'):>8.3f}{_mean(same, 'task_mrr'):>7.3f}")
        searched = [p for p in group if p.name not in (DENSE_INT8, *TRANSFERS)]  # a run's own searchers' plans
        lines.append("Best held-out cosine per target (searchers only): " + "; ".join(
            f"{target} {max(same, key=lambda p: p.cosine).name}" for target, same in _by(searched, lambda p: p.target).items()))
        int8 = [p for p in group if p.name == DENSE_INT8]
        lines.append(f"dense int8, over every target's rounds: {_mean(int8, 'speedup'):.2f}x fp32, held-out cosine "
                     f"{_mean(int8, 'cosine'):.4f}, nbr@10 {_mean(int8, 'neighbour_recall'):.3f}")
        for level in QUALITY_LEVELS:
            kept = [p for p in searched if p.cosine >= level]
            fastest = max(kept, key=lambda p: p.speedup, default=None)
            lines.append(f"fastest plan at held-out cosine >= {level}: " + (
                "none" if fastest is None else
                f"{fastest.name} at {fastest.target}, {fastest.speedup:.2f}x fp32, {fastest.vs_int8:.2f}x int8 "
                f"(cosine {fastest.cosine:.4f}, seed {fastest.seed})"))
        lines += _transfer_lines(group)
    return "\n".join(lines)


def _transfer_lines(group: list[Point]) -> list[str]:
    """Each transfer's held-out cosine against the dedicated PPO run's, target by target
    (mean over seeds)."""
    lines = []
    for name in TRANSFERS:
        pairs = [(target, _mean(same, "cosine"),
                  _mean([p for p in group if p.target == target and p.name == DEFAULT_SEARCHER], "cosine"))
                 for target, same in _by([p for p in group if p.name == name], lambda p: p.target).items()]
        if pairs:
            lines.append(f"{name} against the dedicated PPO run, held-out cosine: " + "; ".join(
                f"{target} {mine:.4f} vs {own:.4f} ({mine - own:+.4f})" for target, mine, own in pairs))
    return lines


def _by(points: list[Point], key) -> dict:
    grouped: dict = {}
    for point in points:
        grouped.setdefault(key(point), []).append(point)
    return grouped


def _mean(points: list[Point], field: str) -> float:
    return statistics.fmean(getattr(point, field) for point in points)


if __name__ == "__main__":
    main()
