"""Every runtime x {dense, dense int8, three pruned plans} on the embedded MiniLM: speedup
against dense PyTorch fp32 measured side by side in one run, held-out cosine as each
runtime runs the model, Lee correlation and size. The pruned plans are uniform 75% heads +
75% FFN neurons and 50% + 50% (int8 in every layer), and a searched plan read from a
`ppocompress compress` result (its own int8 choices); all are refit by least squares.

    python benchmarks/runtimes.py [--plan runs/compress/result.json] [--rounds 3]

Writes benchmarks/results/runtimes.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ppocompress.compress import CompressionPlan, Precision, load_model
from ppocompress.compress.commands.bench import Variant, run_bench
from ppocompress.compress.data.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES, load_splits, subset
from ppocompress.compress.measure.timing import TimingSetup
from ppocompress.compress.runtimes import RUNTIMES
from publish import publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--plan", type=Path, help="a result.json whose delivered plan to include")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    variants = [Variant("dense"), Variant("dense int8", weights=Precision.INT8),
                Variant("uniform 75/75 int8", group_keep=0.75, neuron_keep=0.75, weights=Precision.INT8),
                Variant("uniform 50/50 int8", group_keep=0.5, neuron_keep=0.5, weights=Precision.INT8)]
    if args.plan is not None:
        data = json.loads(args.plan.read_text())
        delivered = data["searchers"][data["searcher"]]
        variants.append(Variant(f"{data['searcher']} plan ({data['target_value']:g}x)",
                                plan=CompressionPlan.from_dict(delivered["plan"])))
    setup = TimingSetup(rounds=args.rounds)
    dense = load_model()
    texts = subset(load_splits(None), CALIBRATION_PASSAGES, EVALUATION_PASSAGES)
    results = run_bench(dense, texts, list(RUNTIMES), variants, setup=setup)
    lines = [f"all-MiniLM-L6-v2, batch {setup.batch_size} x {setup.seq_len} tokens, {setup.threads} threads, "
             f"{setup.rounds} interleaved rounds, {setup.statistic}; speedup against dense PyTorch fp32 in the same run",
             f"{'model':28} {'runtime':12} {'speedup':>8} {'cosine':>7} {'min':>7} {'Lee':>6} {'MB':>6}"]
    for r in results:
        lines.append(f"{r.name:28} {r.runtime:12} {r.speedup:7.2f}x {r.cosine_heldout:7.4f} {r.cosine_heldout_min:7.4f} "
                     f"{r.lee_pearson:6.3f} {r.size_bytes / 1e6:6.1f}")
    publish("runtimes", "\n".join(lines), {"timing": setup.to_dict(), "variants": [r.to_dict() for r in results]})


if __name__ == "__main__":
    main()
