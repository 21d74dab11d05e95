"""Recovery on all-MiniLM-L6-v2: none, least squares (lsq) and lsq then distillation, for
uniform 75/75 and 50/50 plans (heads/FFN neurons kept in every layer, int8) and the PPO
plans searchers.py and frontier.py found (benchmarks/plans/). Each model is judged as it
is served (OpenVINO, static int8 where the plan quantizes): mean cosine to dense PyTorch
fp32 embeddings on every held-out source, Lee correlation, and the minutes each recovery
took; each plan's speedup is measured against dense PyTorch fp32 side by side in one run
at the end. Finished cells are kept in --work, so an interrupted benchmark continues (a
distillation from its checkpoint).

    python benchmarks/recovery.py [--minutes 20] [--plans uniform-75,uniform-50,ppo-5x,ppo-6x]
                                  [--recoveries none,lsq,lsq+distill] [--results recovery]

With three plans or more it also prints how well lsq's held-out cosine ranks the plans as
lsq+distill leaves them (Spearman): whether a search that scores plans after lsq also
picks the best plan to distill. Writes benchmarks/results/<results>.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ppocompress.compress import CompressionPlan, Precision, load_model
from ppocompress.compress.commands.bench import Variant
from ppocompress.compress.data.text import (
    CALIBRATION_PASSAGES,
    lee_documents,
    load_splits,
    subset,
)
from ppocompress.compress.measure.quality import (
    HELD_OUT_MAX_LENGTH,
    LEE_MAX_LENGTH,
    embed,
    embed_session,
    lee_correlation_of,
    spearman,
)
from ppocompress.compress.measure.timing import TimingSetup, measure_latencies
from ppocompress.compress.ops.importance import importance_scores
from ppocompress.compress.pipeline import compress
from ppocompress.compress.recovery.distillation import DistillConfig
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import get_runtime
from ppocompress.search.prepare import IMPORTANCE_PASSAGES, all_int8
from publish import publish

PLANS_DIR = Path(__file__).parent / "plans"
# Every plan in plans/ (minilm-NAME.json) is NAME here: the PPO plans at 5x and 6x, the
# plans of all four searchers at 6x (seeds 0 and 1) for how well lsq ranks plans for distillation,
# and the PPO plans of the frontier run on a Xeon with AMX (amx-ppo-*, some layers left in float).
PLANS = {
    "uniform-75": Variant("uniform 75/75", group_keep=0.75, neuron_keep=0.75, weights=Precision.INT8),
    "uniform-50": Variant("uniform 50/50", group_keep=0.5, neuron_keep=0.5, weights=Precision.INT8),
    **{path.stem.removeprefix("minilm-"): Variant(path.stem.removeprefix("minilm-").replace("-", " "),
                                                  plan=CompressionPlan.from_json_file(path))
       for path in sorted(PLANS_DIR.glob("minilm-*.json"))},
}
DEFAULT_PLANS = ("uniform-75", "uniform-50", "ppo-5x", "ppo-6x")
RECOVERIES = (Recovery.NONE, Recovery.LSQ, Recovery.LSQ_DISTILL)
HELD_OUT = 1500  # held-out passages, balanced between the sources (the reviews have 124)


@dataclass
class Cell:
    plan: str
    recovery: str
    cosine: float  # mean over all held-out passages
    cosine_by_source: dict[str, float]
    lee_pearson: float
    minutes: float  # the recovery's wall time (lsq, or lsq and distillation)
    distill_minutes: float | None = None  # the distillation's training and validation
    distill_steps: int | None = None
    distill_stopped: str | None = None
    validation_cosine: float | None = None  # the best, on the validation source (reviews not in the held-out set)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=DistillConfig().minutes, help="distillation budget per plan")
    parser.add_argument("--plans", default=",".join(DEFAULT_PLANS), help=f"of {', '.join(PLANS)}")
    parser.add_argument("--recoveries", default=",".join(RECOVERIES))
    parser.add_argument("--runtime", default="openvino")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-recovery"))
    parser.add_argument("--results", default="recovery",
                        help="name of the results files (a run on fewer plans or another budget)")
    args = parser.parse_args()
    names, recoveries = args.plans.split(","), [Recovery.parse(r) for r in args.recoveries.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    runtime = get_runtime(args.runtime)
    dense = load_model()
    splits = load_splits(None)
    texts = subset(splits, CALIBRATION_PASSAGES, HELD_OUT)
    held_out = splits.by_source(texts.evaluation)
    reference = embed(dense.model, dense.tokenizer, texts.evaluation, max_length=HELD_OUT_MAX_LENGTH)
    scores = importance_scores(dense, texts.calibration[:IMPORTANCE_PASSAGES])
    config = DistillConfig(minutes=args.minutes)
    cells: list[Cell] = []
    artifacts: dict[str, Path] = {}
    for name in names:
        plan = PLANS[name].plan_for(dense, scores)
        for recovery in recoveries:
            done = args.work / f"{name}-{recovery}.json"
            if done.exists():
                saved = json.loads(done.read_text())
                cells.append(Cell(**saved["cell"]))
                artifacts[name] = Path(saved["artifact"])
                continue
            print(f"{name}: {recovery}", flush=True)
            start = time.monotonic()
            model = compress(dense, plan, recovery, texts.calibration, quantize=False, validation=texts.validation,
                             distillation=config, distill_texts=splits.calibration,
                             checkpoint=args.work / f"{name}-checkpoint", progress=True)
            minutes = (time.monotonic() - start) / 60
            artifact = runtime.export(model, args.work / f"{name}-{recovery}", texts.calibration)
            session = runtime.session(artifact)
            served = embed_session(session, dense.tokenizer, texts.evaluation, max_length=HELD_OUT_MAX_LENGTH)
            cosines = (torch.nn.functional.normalize(served, dim=1) * reference).sum(1)
            position = {p: i for i, p in enumerate(texts.evaluation)}
            by_source = {source: float(cosines[[position[p] for p in passages]].mean())
                         for source, passages in held_out.items()}
            lee_embeddings = embed_session(session, dense.tokenizer, lee_documents(), max_length=LEE_MAX_LENGTH)
            lee = lee_correlation_of(lee_embeddings)["pearson"]
            cell = Cell(name, recovery, float(cosines.mean()), by_source, lee, minutes)
            report = model.distillation
            if report is not None:
                cell.distill_minutes, cell.distill_steps = report.seconds / 60, report.steps
                cell.distill_stopped, cell.validation_cosine = report.stopped, report.best_fidelity
            done.write_text(json.dumps({"cell": asdict(cell), "artifact": str(artifact)}))
            shutil.rmtree(args.work / f"{name}-checkpoint", ignore_errors=True)
            cells.append(cell)
            artifacts[name] = artifact
            per_source = " ".join(f"{s} {c:.4f}" for s, c in by_source.items())
            print(f"  cosine {cell.cosine:.4f} {per_source}, {minutes:.1f} min", flush=True)

    setup = TimingSetup(rounds=args.rounds)
    targets = [("torch", get_runtime("torch").export(dense, args.work / "dense-torch", []), "torch"),
               ("dense int8", runtime.export(all_int8(dense), args.work / "dense-int8", texts.calibration), runtime.name)]
    targets += [(name, artifacts[name], runtime.name) for name in names]
    latency = measure_latencies(targets, setup)
    speedups = {name: latency["torch"].ms / latency[name].ms for name in ["dense int8"] + names}

    sources = list(held_out)
    width = max(14, *(len(PLANS[name].name) for name in names))
    lines = [f"all-MiniLM-L6-v2 served on {runtime.name} (static int8 where a plan quantizes); "
             "speedup against dense PyTorch fp32, "
             f"batch {setup.batch_size} x {setup.seq_len}, {setup.threads} threads, {setup.rounds} rounds, same run",
             f"held-out cosine to dense per source ({', '.join(f'{s} {len(held_out[s])}' for s in sources)} passages), "
             f"distillation budget {args.minutes:g} min; validation: the reviews validation split",
             f"{'plan':{width}} {'speedup':>7} {'recovery':12} {'cosine':>7} " + " ".join(f"{s[:9]:>9}" for s in sources)
             + f" {'Lee':>6} {'minutes':>7} {'steps':>6} {'stopped':8}"]
    for cell in cells:
        lines.append(f"{PLANS[cell.plan].name:{width}} {speedups[cell.plan]:6.2f}x {cell.recovery:12} {cell.cosine:7.4f} "
                     + " ".join(f"{cell.cosine_by_source[s]:9.4f}" for s in sources)
                     + f" {cell.lee_pearson:6.3f} {cell.minutes:7.1f} {cell.distill_steps or '':>6} {cell.distill_stopped or ''}")
    lines.append(f"{'dense int8':{width}} {speedups['dense int8']:6.2f}x")
    ranking = rank_agreement(cells)
    if ranking is not None:
        lines.append(f"lsq ranks the {ranking[0]} plans as lsq+distill leaves them with Spearman {ranking[1]:.2f} "
                     f"(held-out cosine); the best after lsq is {'also' if ranking[2] else 'not'} the best after lsq+distill")
    publish(args.results, "\n".join(lines), {"timing": setup.to_dict(), "distill_minutes": args.minutes, "speedups": speedups,
                                           "held_out": {s: len(p) for s, p in held_out.items()},
                                           "cells": [asdict(c) for c in cells], "rank_agreement": ranking})


def rank_agreement(cells: list[Cell]) -> tuple[int, float, bool] | None:
    """(plans, Spearman of lsq against lsq+distill held-out cosine, whether both put the same
    plan first) over the plans measured both ways, if there are three or more."""
    compared = (Recovery.LSQ, Recovery.LSQ_DISTILL)
    by_plan = {recovery: {c.plan: c.cosine for c in cells if c.recovery == recovery} for recovery in compared}
    plans = [p for p in by_plan[Recovery.LSQ] if p in by_plan[Recovery.LSQ_DISTILL]]
    if len(plans) < 3:
        return None
    lsq, distilled = (np.array([by_plan[r][p] for p in plans]) for r in compared)
    return len(plans), spearman(lsq, distilled), bool(lsq.argmax() == distilled.argmax())


if __name__ == "__main__":
    main()
