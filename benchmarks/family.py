"""One PPO policy for a family of targets against dedicated single-target runs, on
all-MiniLM-L6-v2.

Per seed: one family run (PPO over every target at once, with the evaluations of two
single-target runs in all) against a dedicated PPO run and a dedicated evolutionary run
per target (each with a single-target run's evaluations); then, for a target the family
never saw, a run from the family's policy with one new evaluation (its greedy plan
improved on the free estimate; the plans the family run scored come along in the policy
folder at no cost, and count where they meet the new target) against a dedicated PPO run
there, and the same policy's plan improved on the one-off drops alone (the estimate
without the dropped pairs' measured extras). Each plan is the one compress delivers (its
finalists re-scored on more calibration text), judged on held-out text as the search
prices plans: least squares, the serving runtime's int8 (simulated), mean cosine to the
dense embeddings; beside them, dense int8 with no search. All runs share one preparation
(latency table, sensitivities, dropped pairs); each keeps its state in --work, so an
interrupted benchmark continues.

    python benchmarks/family.py [--targets 2,3,4,5,6] [--unseen 4.5|none] [--seeds 0,1,2] [--evals 200] [--dedicated 5,6|none]

Writes benchmarks/results/family.{txt,json} (--results names another). "Family" is the
name users know a target set by (--targets); the code calls it a target set.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ppocompress.search.evaluator import PlanEvaluator, fidelity_passages
from ppocompress.search.levels import DENSE_INT8_LEVEL, drop_index
from ppocompress.search.plan import Plan
from ppocompress.search.prepare import Prepared, prepare
from ppocompress.search.searching import best_at_high_fidelity, estimated_loss, search
from ppocompress.search.settings import TARGET_SET_RUNS, CompressSettings
from ppocompress.search.state import SearchState
from publish import publish


@dataclass
class Found:
    """A plan a run found, judged on held-out text."""

    run: str  # "family", "ppo", "evolutionary", "zero-shot"
    target: float
    seed: int
    levels: list[str]  # by name
    predicted_speedup: float
    cosine: float  # held-out
    evaluations: int  # spent by the run that found it (a target set's: all its targets')

    @classmethod
    def judged(cls, run: str, target: float, seed: int, plan: Plan, prepared: Prepared, held_out: PlanEvaluator,
               evaluations: int) -> "Found":
        return cls(run, target, seed, plan.names(prepared.menu), prepared.cost.speedup(plan), held_out.quality(plan), evaluations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="2,3,4,5,6", help="the family's")
    parser.add_argument("--dedicated", default=None, help="the targets of the dedicated runs this process makes "
                                                          "(default: all; a subset splits the work between processes; "
                                                          "none: only the family and the unseen target)")
    parser.add_argument("--unseen", default="4.5", help="a target the family never saw, or none (a run that splits the work)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--evals", type=int, default=200,
                        help="of a single-target run; the family gets TARGET_SET_RUNS times as many")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-family"))
    parser.add_argument("--results", default="family", help="writes benchmarks/results/RESULTS.{txt,json}")
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    unseen = None if args.unseen == "none" else float(args.unseen)
    dedicated = (targets if args.dedicated is None else [] if args.dedicated == "none"
                 else [float(t) for t in args.dedicated.split(",")])
    seeds = [int(s) for s in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    set_settings = CompressSettings(target_speedup=None, target_set_speedups=targets, searcher="ppo", baselines=False,
                                    evals=TARGET_SET_RUNS * args.evals)
    shared_path = args.work / "prepared.json"
    shared = SearchState.load(shared_path) if shared_path.exists() else SearchState(asdict(set_settings))
    prepared = prepare(set_settings, shared, lambda: shared.save(shared_path), print)
    held_out = held_out_evaluator(prepared)
    int8 = Plan.uniform(prepared.menu.index(DENSE_INT8_LEVEL), len(prepared.scores))  # the no-effort alternative: no search
    dense_int8 = Found.judged("dense int8", 0.0, -1, int8, prepared, held_out, 0)

    def run(name: str, settings: CompressSettings, prepared: Prepared = prepared) -> dict:
        folder = args.work / name
        folder.mkdir(exist_ok=True)
        path = folder / "state.json"
        state = (SearchState.load(path) if path.exists()
                 else SearchState(asdict(settings), measurements=copy.deepcopy(shared.measurements)))
        print(f"{name}", flush=True)
        return search(prepared, settings, state, path, folder / "policy")

    estimate = estimated_loss(prepared, set_settings.targets())

    def plans_of(run_name: str, results: dict, seed: int) -> list[Found]:
        found = []
        for label, by_searcher in results.items():
            result = next(iter(by_searcher.values()))
            plan, _ = best_at_high_fidelity(prepared.evaluator, result, estimate)
            target = float(label.removesuffix("x"))
            found.append(Found.judged(run_name, target, seed, plan, prepared, held_out, result.evaluations))
        return found

    plans: list[Found] = []
    for seed in seeds:
        family = replace(set_settings, seed=seed)
        plans += plans_of("family", run(f"family-seed{seed}", family), seed)
        for target in [*dedicated, *([unseen] if unseen is not None else [])]:
            single = CompressSettings(target_speedup=target, searcher="ppo", baselines=False, evals=args.evals, seed=seed)
            plans += plans_of("ppo", run(f"ppo-{target:g}x-seed{seed}", single), seed)
            if target != unseen:
                evolutionary = replace(single, searcher="evolutionary")
                plans += plans_of("evolutionary", run(f"evolutionary-{target:g}x-seed{seed}", evolutionary), seed)
        if unseen is not None:
            zero_shot = CompressSettings(target_speedup=unseen, searcher="ppo", baselines=False, evals=1, seed=seed,
                                         policy=str(args.work / f"family-seed{seed}" / "policy"))
            plans += plans_of("zero-shot", run(f"zero-shot-{unseen:g}x-seed{seed}", zero_shot), seed)
            # the same policy's plan searched on the one-off drops alone: what the dropped pairs' extras change
            plans += plans_of("zero-shot one-off", run(f"zero-shot-one-off-{unseen:g}x-seed{seed}", zero_shot,
                                                       replace(prepared, drop_interaction=None)), seed)
    text = table(plans, targets, unseen, seeds, args.evals, dense_int8) + "\n" + pair_lines(prepared)
    publish(args.results, text, {"targets": targets, "unseen": unseen, "seeds": seeds, "evals": args.evals,
                             "family_evals": TARGET_SET_RUNS * args.evals, "runtime": prepared.runtime,
                             "held_out_passages": len(prepared.texts.evaluation), "dense_int8": asdict(dense_int8),
                             "plans": [asdict(p) for p in plans]})


def pair_lines(prepared: Prepared) -> str:
    """Each pair of dropped layers: the loss the estimate adds up from the one-off drops,
    and what the pair was measured to lose beyond that."""
    drop = drop_index(prepared.menu)
    layers = len(prepared.scores)
    cells = [f"{i}+{j} {prepared.sensitivity[i, drop] + prepared.sensitivity[j, drop]:.3f}{prepared.drop_interaction[i, j]:+.3f}"
             for i in range(layers) for j in range(i + 1, layers)]
    return "layers dropped in pairs (calibration loss: one-off drops added up, then what the pair loses beyond that):\n  " + \
        "\n  ".join("  ".join(cells[k:k + 5]) for k in range(0, len(cells), 5))


def held_out_evaluator(prepared: Prepared) -> PlanEvaluator:
    """Scores plans on the held-out passages as the search scores them on calibration text:
    layers refit on the same calibration passages, int8 simulated for the serving runtime."""
    evaluation = prepared.texts.evaluation
    refit = prepared.texts.calibration[fidelity_passages(prepared.dense.is_causal)["high"]:]
    return PlanEvaluator(prepared.dense, prepared.menu, prepared.scores, evaluation, low_fidelity=len(evaluation),
                         high_fidelity=len(evaluation), recovery="lsq", recovery_texts=refit, runtime=prepared.runtime)


def table(plans: list[Found], targets: list[float], unseen: float | None, seeds: list[int], evals: int,
          dense_int8: Found) -> str:
    def cosines(run: str, target: float) -> list[float]:
        return [p.cosine for p in plans if p.run == run and p.target == target]

    def cell(values: list[float]) -> str:
        if not values:
            return f"{'-':>15}"
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):7.4f} ± {spread:.3f}"

    spent = statistics.mean(p.evaluations for p in plans if p.run == "family" and p.target == targets[0])
    lines = [f"all-MiniLM-L6-v2: held-out mean cosine (lsq, simulated int8), mean ± spread over seeds "
             f"{', '.join(map(str, seeds))}",
             f"family: one PPO run over {', '.join(f'{t:g}x' for t in targets)} with {TARGET_SET_RUNS * evals} evaluations "
             f"in all "
             f"(spent {spent:.0f} on average); ppo and evolutionary: a run per target, {evals} evaluations each",
             f"{'target':>7} {'family':>15} {'ppo (own run)':>15} {'evolutionary':>15} {'family - ppo':>12} {'within 0.005':>12}"]
    for target in targets:
        family, ppo = cosines("family", target), cosines("ppo", target)
        gap = statistics.mean(family) - statistics.mean(ppo) if family and ppo else float("nan")
        verdict = "-" if not (family and ppo) else "yes" if gap >= -0.005 else "no"
        lines.append(f"{target:6g}x {cell(family)} {cell(ppo)} {cell(cosines('evolutionary', target))} {gap:12.4f} {verdict:>12}")
    if unseen is not None:
        zero, own = cosines("zero-shot", unseen), cosines("ppo", unseen)
        speeds = [p.predicted_speedup for p in plans if p.run == "zero-shot"]
        gap = statistics.mean(zero) - statistics.mean(own) if zero and own else float("nan")
        lines.append(f"unseen {unseen:g}x: from the family's policy, 1 new evaluation (and the family's scored plans) "
                     f"{cell(zero)}, predicted "
                     f"{min(speeds, default=float('nan')):.2f}x-{max(speeds, default=float('nan')):.2f}x; dedicated ppo ({evals} "
                     f"evaluations) {cell(own)}; difference {gap:.4f} ({'within' if gap >= -0.01 else 'not within'} 0.01)")
        one_off = {p.seed: p for p in plans if p.run == "zero-shot one-off"}
        by_seed = {p.seed: p for p in plans if p.run == "zero-shot"}
        lines.append("  per seed, from the policy (its plan searched on the one-off drops alone) against the dedicated run: "
                     + "; ".join(
            f"{p.seed}: {by_seed[p.seed].cosine:.4f} ({one_off[p.seed].cosine:.4f}) against {p.cosine:.4f}" for p in plans
            if p.run == "ppo" and p.target == unseen and p.seed in by_seed and p.seed in one_off))
    lines.append(f"dense int8, no search: {dense_int8.cosine:.4f} at predicted {dense_int8.predicted_speedup:.2f}x "
                 f"(meets {', '.join(f'{t:g}x' for t in targets if dense_int8.predicted_speedup >= t) or 'none'} of the targets)")
    lines.append("plans of seed " + str(seeds[0]) + ":")
    for p in plans:
        if p.seed == seeds[0]:
            lines.append(f"  {p.run:12} {p.target:4g}x {p.cosine:.4f} predicted {p.predicted_speedup:.2f}x  {' '.join(p.levels)}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
