"""How well the search's int8 simulation predicts each runtime's real int8, per level.

For every menu level applied to all layers of the embedded MiniLM, the quality the search
scores (cosine to dense on its low-fidelity calibration passages, layers refit by least
squares, int8 simulated as the runtime computes it) is set beside the quality of the
model as delivered (sequential least squares, exported for the runtime, run by it) on the
same passages. What matters for ranking plans is the int8 *drop*: fp level minus int8
level, simulated against real. Prints a table and writes benchmarks/results/int8_simulation.{txt,json}.

    python benchmarks/int8_simulation.py [--runtimes openvino,onnxruntime] [--keep 1,0.75,0.5,0.25]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ppocompress.compress import load_model
from ppocompress.compress.data.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES, load_splits, subset
from ppocompress.compress.measure.quality import embed_session
from ppocompress.compress.ops.importance import importance_scores
from ppocompress.compress.pipeline import compress
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import get_runtime
from ppocompress.search.evaluator import HIGH_FIDELITY, PlanEvaluator
from ppocompress.search.levels import default_menu
from ppocompress.search.prepare import IMPORTANCE_PASSAGES
from publish import publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtimes", default="openvino,onnxruntime")
    parser.add_argument("--keep", default="1,0.5,0.25", help="fractions kept; levels with both heads and FFN at one of them")
    args = parser.parse_args()
    dense = load_model()
    calibration = subset(load_splits(None), CALIBRATION_PASSAGES, EVALUATION_PASSAGES).calibration
    scores = importance_scores(dense, calibration[:IMPORTANCE_PASSAGES])
    menu = default_menu()
    keep = {float(v) for v in args.keep.split(",")}
    rows = []
    for name in args.runtimes.split(","):
        runtime = get_runtime(name)
        evaluator = PlanEvaluator(dense, menu, scores, calibration, recovery=Recovery.LSQ,
                                  recovery_texts=calibration[HIGH_FIDELITY:], runtime=name)
        reference = evaluator.fidelity["low"].reference
        with tempfile.TemporaryDirectory() as work:
            for index, level in enumerate(menu):
                if level.drop or level.group_keep not in keep or level.neuron_keep not in keep:
                    continue
                levels = [index] * len(evaluator.table)
                simulated = evaluator.quality(levels)
                model = compress(dense, evaluator.plan(levels), Recovery.LSQ, calibration[HIGH_FIDELITY:], quantize=False)
                artifact = runtime.export(model, Path(work) / f"{name}-{index}", calibration)
                embeddings = embed_session(runtime.session(artifact), dense.tokenizer, evaluator.texts["low"])
                real = float((embeddings * reference).sum(dim=1).mean())
                rows.append({"runtime": name, "level": level.name, "weights": level.weights.value, "simulated": simulated,
                             "real": real})
                print(f"{name:12} {level.name:14} simulated {simulated:.4f} real {real:.4f}", flush=True)
    lines = [f"{'runtime':12} {'level':10} {'sim fp':>7} {'real fp':>7} {'sim q':>7} {'real q':>7} "
             f"{'sim drop':>8} {'real drop':>9}"]
    for row in rows:
        if row["int8"]:
            fp = next(r for r in rows if r["runtime"] == row["runtime"] and r["level"] == row["level"].removesuffix("-int8"))
            lines.append(f"{row['runtime']:12} {fp['level']:10} {fp['simulated']:7.4f} {fp['real']:7.4f} {row['simulated']:7.4f} "
                         f"{row['real']:7.4f} {fp['simulated'] - row['simulated']:8.4f} {fp['real'] - row['real']:9.4f}")
    publish("int8_simulation", "\n".join(lines), rows)


if __name__ == "__main__":
    main()
