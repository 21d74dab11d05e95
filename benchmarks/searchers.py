"""The four searchers on the embedded all-MiniLM-L6-v2 at several speedup targets and seeds.

For each (target, seed), one `ppocompress compress` run on the default runtime: every
searcher gets the same number of plan evaluations; every searcher's best plan is recovered
(lsq), exported, judged on held-out text the search never saw, and timed side by side with
dense PyTorch fp32 and with the dense int8 model on the same runtime (the no-effort
alternative). Finished runs are kept in --work, so an interrupted benchmark continues.
Prints per target and searcher the mean and spread of held-out cosine over the seeds, and
writes benchmarks/results/searchers.{txt,json}.

    python benchmarks/searchers.py [--targets 4,5,6] [--seeds 0,1,2] [--evals 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from publish import publish

from ppocompress.reporting import print_compress
from ppocompress.search.results import CompressResult


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="4,5,6")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--evals", type=int, default=200)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-searchers"))
    args = parser.parse_args()
    runs: dict[tuple[float, int], CompressResult] = {}
    for target in args.targets.split(","):
        for seed in args.seeds.split(","):
            out = args.work / f"speedup-{target}-seed{seed}"
            command = [sys.executable, "-m", "ppocompress.cli", "compress", "--target-speedup", target, "--evals", str(args.evals),
                       "--seed", seed, "--out", str(out)]
            if not (out / "result.json").exists():  # else done in an earlier, interrupted benchmark run
                if (out / "state.json").exists():
                    command.append("--resume")  # an interrupted run continues where it stopped
                print("+", " ".join(command), flush=True)
                start = time.monotonic()
                done = subprocess.run(command, capture_output=True, text=True)
                sys.stderr.write(done.stderr[-2000:])
                if done.returncode != 0:
                    return done.returncode
                (out / "wall_time_s.txt").write_text(f"{time.monotonic() - start:.0f}\n")
            runs[float(target), int(seed)] = CompressResult.from_file(out / "result.json")
            print(f"target {target} seed {seed}: {_minutes(out)}", flush=True)
    text = "".join(_table(result, seed) for (_, seed), result in runs.items()) + "\n" + _summary(runs)
    publish("searchers", text, {"evals": args.evals, "runs": [
        {"target": t, "seed": s, "result": {k: v for k, v in asdict(r).items() if k not in ("curves", "evaluated")}}
        for (t, s), r in runs.items()]})
    return 0


def _table(result: CompressResult, seed: int) -> str:
    """The summary `ppocompress compress` prints, for one run."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_compress(result)
    return f"seed {seed}\n" + buffer.getvalue() + "\n"


def _minutes(out: Path) -> str:
    """The run's wall time, when this benchmark ran it (resumed runs report their last part)."""
    path = out / "wall_time_s.txt"
    return f"{int(path.read_text()) / 60:.1f} min" if path.exists() else "-"


def _summary(runs: dict[tuple[float, int], CompressResult]) -> str:
    """Per target and searcher: held-out cosine, mean and spread over seeds; measured speedups."""
    lines = []
    for target in sorted({t for t, _ in runs}):
        results = [r for (t, _), r in runs.items() if t == target]
        alternative = statistics.mean(r.dense_int8.speedup for r in results)
        lines.append(f"target {target:g}x, {len(results)} seeds; dense int8 on {results[0].runtime}: {alternative:.2f}x, "
                     f"cosine {statistics.mean(r.dense_int8.cosine_heldout for r in results):.4f}")
        for name in results[0].searchers:
            cosines = [r.searchers[name].cosine_heldout for r in results]
            speedups = [r.searchers[name].speedup for r in results]
            spread = statistics.stdev(cosines) if len(cosines) > 1 else 0.0
            lines.append(f"  {name:>12}: held-out cosine {statistics.mean(cosines):.4f} +- {spread:.4f} "
                         f"(min {min(cosines):.4f}); measured {min(speedups):.2f}-{max(speedups):.2f}x, "
                         f"{statistics.mean(r.searchers[name].speedup_vs_dense_int8 for r in results):.2f}x the dense int8")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
