"""How well the search prices a decoder's weight precisions on OpenVINO, per level.

Each chosen menu level is applied to every layer of the embedded SmolLM2 (output head in
int8, as the search keeps it). Its KL to the dense fp32 model on the passages a search's
finalists are scored on is measured three ways:

- data-free: int4 rounded without data, as the search priced it before data-aware int4;
- simulated: as the search prices it (least squares as the search refits, int8 rounded,
  int4 fitted to the dense model's inputs as NNCF's AWQ and scale estimation fit it);
- real: the model as delivered (sequential least squares, exported by NNCF with AWQ and
  scale estimation on the calibration text, run by OpenVINO at its own inference
  precision, so the float level's real KL is the runtime's own rounding).

Prints a table and writes benchmarks/results/decoder_simulation.{txt,json}.

    python benchmarks/decoder_simulation.py [--levels h100-f100,h100-f100-int8,...]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from ppocompress.compress import load_model
from ppocompress.compress.data.text import load_splits, subset
from ppocompress.compress.ops.importance import importance_scores
from ppocompress.compress.pipeline import compress
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import get_runtime
from ppocompress.search.evaluator import PlanEvaluator, fidelity_passages
from ppocompress.search.prepare import IMPORTANCE_PASSAGES, model_menu, refit_passages
from ppocompress.search.settings import CompressSettings
from publish import publish

LEVELS = "h100-f100,h100-f100-int8,h100-f100-int4,h67-f75,h67-f75-int8,h67-f75-int4,h33-f50-int8,h33-f50-int4"


class DataFree(PlanEvaluator):
    """The search's evaluator with int4 rounded without data (no input statistics)."""

    def _dense_statistics(self, index, kept):
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default=LEVELS)
    args = parser.parse_args()
    settings = CompressSettings(model="smollm2")
    dense = load_model(settings.model)
    texts = subset(load_splits(settings.text), settings.calibration_texts, settings.evaluation_texts)
    calibration = texts.calibration
    runtime = get_runtime("openvino")
    menu = model_menu(dense, runtime.name)
    scores = importance_scores(dense, calibration[:IMPORTANCE_PASSAGES])
    refit = refit_passages(calibration[fidelity_passages(True)["high"]:], True)
    evaluators = {kind: cls(dense, menu, scores, calibration, recovery=Recovery.LSQ, recovery_texts=refit, runtime=runtime.name)
                  for kind, cls in (("simulated", PlanEvaluator), ("data-free", DataFree))}
    reference = evaluators["simulated"].fidelity["high"].reference
    names = [level.name for level in menu]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name in args.levels.split(","):
            plan = [names.index(name)] * len(evaluators["simulated"].table)
            row = {"level": name}
            for kind, evaluator in evaluators.items():
                row[kind] = -math.log(evaluator.quality(plan, "high"))
            model = compress(dense, evaluators["simulated"].plan(plan), Recovery.LSQ, refit, quantize=False)
            artifact = runtime.export(model, Path(work) / name, calibration)
            row["real"] = reference.compare(runtime.session(artifact)).kl
            rows.append(row)
            print(f"{name:16} data-free {row['data-free']:.4f} simulated {row['simulated']:.4f} real {row['real']:.4f}",
                  flush=True)
    lines = [f"KL to dense fp32 on {len(evaluators['simulated'].texts['high'])} calibration passages, every layer at the level",
             f"{'level':16} {'data-free':>9} {'simulated':>9} {'real':>7} {'sim/real':>8}"]
    lines += [f"{r['level']:16} {r['data-free']:9.4f} {r['simulated']:9.4f} {r['real']:7.4f} {r['simulated'] / r['real']:8.2f}"
              for r in rows]
    publish("decoder_simulation", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
