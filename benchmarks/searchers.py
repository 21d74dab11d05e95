"""The four searchers on the embedded all-MiniLM-L6-v2 at several speedup targets.

For each target, one `ppocompress compress` run: every searcher gets the same number of
plan evaluations; every searcher's best plan is recovered (lsq), exported, judged on
held-out text the search never saw, and timed side by side with the dense model.
Keeps a table and the per-target result.json files' numbers under benchmarks/results/.
Usage: python benchmarks/searchers.py [--targets 2,3,4] [--evals 300] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from ppocompress.reporting import print_compress

RESULTS = Path(__file__).parent / "results"
FIELDS = ("searcher", "backend", "predicted_speedup", "measured_speedup", "measured_speedup_vs_onnx_dense",
          "cosine_heldout", "lee_pearson", "levels", "dense_latency_ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="2,3,4")
    parser.add_argument("--evals", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-searchers"))
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    os.environ["COLUMNS"] = "180"  # the tables, printed to a file, at full width
    rows, lines = [], []
    for target in args.targets.split(","):
        out = args.work / f"speedup-{target}"
        command = ["ppocompress", "compress", "--target-speedup", target, "--evals", str(args.evals),
                   "--seed", str(args.seed), "--out", str(out)]
        if not (out / "result.json").exists():  # else done in an earlier, interrupted benchmark run
            if (out / "state.json").exists():
                command.append("--resume")  # an interrupted target continues where it stopped
            print("+", " ".join(command), flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            sys.stderr.write(done.stderr)
            if done.returncode != 0:
                return done.returncode
        result = json.loads((out / "result.json").read_text())
        lines.append(_table(result))
        for row in [result, *result["baselines"].values()]:
            rows.append({"target_speedup": float(target), "evaluations": row["evaluations"],
                         **{k: row[k] for k in FIELDS}, "dense_lee_pearson": row["dense_lee_pearson"],
                         "latency_table_error": result["latency_table"]})
    summary = _summary(rows)
    text = "".join(lines) + "\n" + summary
    print(summary)
    (RESULTS / "searchers.txt").write_text(text)
    (RESULTS / "searchers.json").write_text(json.dumps({"evals": args.evals, "seed": args.seed, "rows": rows}, indent=1))
    return 0


def _table(result: dict) -> str:
    """The searchers' table, as `ppocompress compress` prints it."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_compress(result)
    return buffer.getvalue()


def _summary(rows: list[dict]) -> str:
    """Per target: who kept the most held-out quality, and whether each plan met the target when measured."""
    out = []
    for target in sorted({row["target_speedup"] for row in rows}):
        group = [row for row in rows if row["target_speedup"] == target]
        best = max(group, key=lambda row: row["cosine_heldout"])
        out.append(f"target {target:g}x: best held-out cosine {best['cosine_heldout']:.4f} by {best['searcher']}")
        for row in group:
            met = "meets" if row["measured_speedup"] >= target else "misses"
            out.append(f"  {row['searcher']:>12}: cosine {row['cosine_heldout']:.4f}, predicted {row['predicted_speedup']:.2f}x, "
                       f"measured {row['measured_speedup']:.2f}x ({met} the target; dense PyTorch {row['dense_latency_ms']:.0f} ms)")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
