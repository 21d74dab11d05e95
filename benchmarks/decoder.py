"""SmolLM2-135M (the embedded decoder) on OpenVINO GenAI, at speedup targets against its
own dense int8 model: three between dense int8's speed and dense int4's, one beyond.

Per seed, one `ppocompress compress --target-int8-speedups ...` run: PPO searches the
target set once; evolutionary, uniform, random and the estimate-only plan search each
target on an equal share of as many evaluations. Every searcher's plan is recovered
(least squares), compressed as NNCF does, judged on held-out text and timed side by side
with dense PyTorch fp32, and with the no-search alternatives: dense int8, dense int4 and
NNCF's own mixed precision at the delivered (PPO's) plan's weight bytes. Finished runs
stay in --work, so an interrupted benchmark continues, in a later session too; a later
seed starts from the first seed's preparation and scored plans (see _start_from).

Prints each run's summary, then per target the mean over the seeds run of held-out
perplexity, KL and top-1, weight MB and the measured decode speedup against dense int8,
and whether PPO's perplexity is below each rival's: NNCF mixed (at PPO's bytes), the
estimate-only plan and the evolutionary searcher's. Writes benchmarks/results/decoder.{txt,json}
(decoder_size.{txt,json} with --sizes).

With --sizes the targets are weight bytes instead (`--target-sizes`: fractions of dense
PyTorch fp32's bytes; dense int8 on OpenVINO is about 0.26, dense int4 0.16): no timing
decides the plan, and NNCF's mixed precision is compared at the same bytes exactly.
--start-from lets the first seed begin with another finished run's one-off measurements
and scored plans (e.g. a speed-target run's: they do not depend on the target).

    python benchmarks/decoder.py [--targets 1.1,1.2,1.25,1.4 | --sizes 0.23,0.2,0.18,0.15]
                                 [--seeds 0,1,2] [--work DIR] [--start-from RUN]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ppocompress.search.results import MeasuredModel, TargetSetResult
from publish import publish
from searchers import compact_result, run_compress, run_summary, wall_minutes

MODEL = "smollm2"
RIVALS = ("nncf mixed", "estimate", "evolutionary")  # what PPO must beat at every target
# the setting (CompressSettings' field) each target option sets
TARGET_SETTINGS = {"--target-int8-speedups": "target_set_int8_speedups", "--target-sizes": "target_set_sizes"}
ROWS = ("ppo", "evolutionary", "estimate", "uniform", "random", "nncf mixed", "dense int4", "dense int8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="1.1,1.2,1.25,1.4", help="speedups against the dense int8 model")
    parser.add_argument("--sizes", help="or: weight bytes as fractions of dense PyTorch fp32's")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=Path("runs") / "bench-decoder")
    parser.add_argument("--start-from", type=Path, help="a finished run whose one-off measurements the first seed reuses")
    args = parser.parse_args()
    option, targets = ("--target-sizes", args.sizes) if args.sizes else ("--target-int8-speedups", args.targets)
    runs: dict[int, TargetSetResult] = {}
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        out = args.work / f"seed{seed}"
        if not (out / "family.json").exists():  # else finished in an earlier benchmark run
            first = args.work / f"seed{seeds[0]}"
            _start_from(args.start_from if out == first and args.start_from else first, out, seed, option, targets)
            code = run_compress(["--model", MODEL, option, targets, "--seed", str(seed), "--out", str(out)], out)
            if code != 0:
                return code
        runs[seed] = TargetSetResult.from_dir(out)
        print(f"seed {seed}: {wall_minutes(out)}", flush=True)
    text = "".join(run_summary(member, seed) for seed, run in runs.items() for member in run.members)
    publish("decoder_size" if args.sizes else "decoder", text + "\n" + _summary(runs), {
        "option": option, "targets": targets, "seeds": list(runs),
        "runs": [{"seed": seed, "evaluations": run.evaluations, "members": [compact_result(m) for m in run.members]}
                 for seed, run in runs.items()]})
    return 0


def _start_from(first: Path, out: Path, seed: int, option: str, targets: str) -> None:
    """A seed's run starts from `first`'s state (the first seed's, or --start-from), as if
    interrupted there: its one-off measurements (importance, timings, sensitivities,
    dropped pairs) do not depend on the seed or the targets, and its plan evaluations are
    deterministic, so they come from the cache as a resumed run's do; each searcher still
    counts every plan it asks for."""
    if out == first or (out / "state.json").exists() or not (first / "state.json").exists():
        return
    state = json.loads((first / "state.json").read_text())
    settings = state["settings"]
    for key in [key for key in settings if key.startswith("target")]:
        settings[key] = None
    settings[TARGET_SETTINGS[option]] = [float(t) for t in targets.split(",")]
    settings["seed"] = seed
    state["finished"], state["measurements"]["run_seconds"] = {}, {}
    out.mkdir(parents=True, exist_ok=True)
    (out / "state.json").write_text(json.dumps(state))


def _models(member) -> dict[str, MeasuredModel]:
    """Every model a run's member measured, by its row name."""
    return {**member.searchers, **member.alternatives, "dense int8": member.dense_int8}


def _summary(runs: dict[int, TargetSetResult]) -> str:
    """Per target, each model's means over the seeds, and PPO against its rivals."""
    lines = []
    members = [run.members for run in runs.values()]
    for index, first in enumerate(members[0]):
        per_seed = [_models(run[index]) for run in members]
        dense_ppl = statistics.mean(run[index].dense.perplexity_heldout for run in members)
        lines.append(f"target {first.target_label}, {len(per_seed)} seed(s); dense perplexity {dense_ppl:.2f}")
        lines.append(f"  {'model':<13} {'ppl':>15} {'ratio':>6} {'KL':>7} {'top-1':>6} {'MB':>6} {'vs int8':>8} {'prefill':>8}")
        mean_ppl = {}
        for name in ROWS:
            measured = [models[name] for models in per_seed if name in models]
            if not measured:
                continue
            ppl = [m.perplexity_heldout for m in measured]
            mean_ppl[name] = statistics.mean(ppl)
            spread = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
            prefill = statistics.mean(run[index].prefill_speedup(models[name]) for run, models in zip(members, per_seed)
                                      if name in models)
            lines.append(f"  {name:<13} {mean_ppl[name]:>8.2f} +- {spread:<4.2f} {mean_ppl[name] / dense_ppl:>6.3f} "
                         f"{statistics.mean(m.kl_heldout for m in measured):>7.4f} "
                         f"{statistics.mean(m.top1_agreement for m in measured):>6.3f} "
                         f"{statistics.mean(m.size_bytes for m in measured) / 1e6:>6.1f} "
                         f"{statistics.mean(m.speedup_vs_dense_int8 for m in measured):>7.2f}x {prefill:>7.2f}x")
        verdicts = [f"{'below' if mean_ppl['ppo'] < mean_ppl[r] else 'NOT below'} {r}" for r in RIVALS if r in mean_ppl]
        lines.append(f"  PPO's mean perplexity: {', '.join(verdicts)}")
    lines.append("ratio: perplexity over the dense model's; vs int8: decode speedup against dense int8 on OpenVINO; "
                 "prefill: the prompt's speedup against dense PyTorch fp32")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
