"""The four searchers on an embedded model at several speedup targets and seeds.

For each (target, seed), one `ppocompress compress` run on the default runtime: every
searcher gets the same number of plan evaluations; every searcher's best plan is recovered
(lsq), exported, judged on held-out text the search never saw, and timed side by side with
dense PyTorch fp32 and with the dense int8 model on the same runtime (the no-effort
alternative). Finished runs are kept in --work, so an interrupted benchmark continues.
Prints per target and searcher the mean and spread of held-out quality over the seeds
(cosine for an encoder; KL and perplexity for a causal LM, whose speedups are of decoding),
and writes benchmarks/results/NAME.{txt,json}.

    python benchmarks/searchers.py [--targets 4,5,6] [--seeds 0,1,2] [--evals 200] [--work DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ppocompress.reporting import print_compress
from ppocompress.search.results import CompressResult, quality_columns
from publish import publish


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="an embedded model's name or a model folder; default MiniLM")
    parser.add_argument("--targets", default="4,5,6")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--evals", type=int, default=None, help="per searcher; default compress's for the model's kind")
    parser.add_argument("--name", default="searchers", help="of the results files and the default work folder")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path("runs") / f"bench-{args.name}"
    runs: dict[tuple[float, int], CompressResult] = {}
    for target in args.targets.split(","):
        for seed in args.seeds.split(","):
            out = work / f"speedup-{target}-seed{seed}"
            arguments = ["--target-speedup", target, "--seed", seed, "--out", str(out)]
            arguments += ["--model", args.model] if args.model else []
            arguments += ["--evals", str(args.evals)] if args.evals else []
            if not (out / "result.json").exists():  # else done in an earlier, interrupted benchmark run
                code = run_compress(arguments, out)
                if code != 0:
                    return code
            runs[float(target), int(seed)] = CompressResult.from_file(out / "result.json")
            print(f"target {target} seed {seed}: {wall_minutes(out)}", flush=True)
    text = "".join(run_summary(result, seed) for (_, seed), result in runs.items()) + "\n" + _summary(runs)
    publish(args.name, text, {"evals": args.evals,
                              "runs": [{"target": t, "seed": s, "result": compact_result(r)} for (t, s), r in runs.items()]})
    return 0


def run_compress(arguments: list[str], out: Path) -> int:
    """One `ppocompress compress` into `out`, continuing an interrupted one there (--resume
    when its state is on disk); its wall time kept beside it. Its exit code."""
    command = [sys.executable, "-m", "ppocompress.cli", "compress", *arguments]
    if (out / "state.json").exists():
        command.append("--resume")
    print("+", " ".join(command), flush=True)
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-2000:])
    if done.returncode == 0:
        (out / "wall_time_s.txt").write_text(f"{time.monotonic() - start:.0f}\n")
    return done.returncode


def compact_result(result: CompressResult) -> dict:
    """The result without what is long and kept in the run folder: search histories, and
    the plans' kept unit indices (each searcher's levels say the plan)."""
    data = {k: v for k, v in json.loads(result.to_json()).items() if k not in ("curves", "evaluated")}
    for measured in data["searchers"].values():
        measured.pop("plan")
    return data


def run_summary(result: CompressResult, seed: int) -> str:
    """The summary `ppocompress compress` prints, for one run."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_compress(result)
    return f"seed {seed}\n" + buffer.getvalue() + "\n"


def wall_minutes(out: Path) -> str:
    """The run's wall time, when this benchmark ran it (resumed runs report their last part)."""
    path = out / "wall_time_s.txt"
    return f"{int(path.read_text()) / 60:.1f} min" if path.exists() else "-"


def _summary(runs: dict[tuple[float, int], CompressResult]) -> str:
    """Per target and searcher: held-out quality, mean and spread over seeds; measured speedups."""
    lines = []
    for target in sorted({t for t, _ in runs}):
        results = [r for (t, _), r in runs.items() if t == target]
        columns = quality_columns(results[0].causal)
        alternative = statistics.mean(r.dense_int8.speedup for r in results)
        quality = ", ".join(f"{header} {statistics.mean(getattr(r.dense_int8, field) for r in results):{spec}}"
                            for header, field, spec in columns)
        lines.append(f"target {target:g}x, {len(results)} seeds; dense int8 on {results[0].runtime}: {alternative:.2f}x, "
                     f"{quality}")
        for name in results[0].searchers:
            measured = [r.searchers[name] for r in results]
            parts = []
            for header, field, spec in columns[:2]:
                values = [getattr(m, field) for m in measured]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                parts.append(f"{header} {statistics.mean(values):{spec}} +- {spread:{spec}}")
            speedups = [m.speedup for m in measured]
            prefill = [r.prefill_speedup(r.searchers[name]) for r in results]
            lines.append(f"  {name:>12}: held-out {', '.join(parts)}; measured {min(speedups):.2f}-{max(speedups):.2f}x"
                         + (f" decode, {min(prefill):.2f}-{max(prefill):.2f}x prefill" if results[0].causal else "")
                         + f", {statistics.mean(m.speedup_vs_dense_int8 for m in measured):.2f}x the dense int8")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
