"""kill -9 anywhere: `compress` killed with SIGKILL at random moments, resumed each time,
ends as an uninterrupted run ends.

A tiny BERT (built here, as the tests build theirs) is compressed with `--cost flops` and
the evolutionary searcher, once without interruption, noting when each phase began
(loading, importance, sensitivity, search, delivery, from the run's log). (Not PPO: its
rehearsal, thousands of free episodes per agent, makes every run long, even of this size;
tests/test_search_job.py resumes an interrupted PPO search to the same plan.) Then chains:
each starts from a copy of that finished output (a previous run's model that must never
be lost), starts the same command afresh, and kills it in a
phase (the phases in turn, kill after kill): once the phase's log line appears, at a
random moment within that phase's length in the uninterrupted run. It checks that the
previous model and result are still whole, resumes with --resume, kills again, ... until a
run finishes. The finished output must equal the uninterrupted one: every searcher's
plan, evaluations, held-out quality, and the same files, with no staging or temporary
files left. Moments come from a seeded generator, so a rerun kills at the same moments.

    python benchmarks/kill_resume.py [--kills 20] [--per-chain 4] [--seed 0]

Writes benchmarks/results/kill_resume.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from publish import publish

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from compress_models import save_tiny_model  # noqa: E402  the tests' tiny model builder
from ppocompress.compress.data.text import load_splits  # noqa: E402
from ppocompress.search.results import CompressResult  # noqa: E402

# Leftovers a finished run must not have (hidden names only; the model's own files are compared).
LEFTOVER_MARKS = (".staging-", ".tmp", ".old-", ".write-test-", ".lock", ".recovery")
PASSAGES = 160  # of the default text: enough for calibration, validation and evaluation splits
# Each phase and the start of the log line that opens it ("" for loading: the process's start).
PHASES = {"loading": "", "importance": "model ", "sensitivity": "sensitivity of ", "search": "search: ",
          "delivery": "1.5x: re-scoring"}
POLL_S = 0.05


@dataclass
class Kill:
    chain: int
    aimed_at: str  # the phase the kill was meant for
    after_s: float  # when the kill came, after the start of that attempt
    phase: str  # the last log line before it
    previous_intact: bool  # the previous finished model and result still loaded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--per-chain", type=int, default=4, help="kills before a chain lets its run finish")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-kill-resume"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    model = save_tiny_model("bert", args.work / "tiny-bert")
    text = args.work / "text.txt"
    text.write_text("\n".join(load_splits(None).calibration[:PASSAGES]))
    command = [sys.executable, "-m", "ppocompress.cli", "compress", "--model", str(model), "--text", str(text),
               "--cost", "flops", "--runtime", "onnxruntime", "--target-speedup", "1.5", "--evals", "24",
               "--searcher", "evolutionary", "--no-baselines"]

    reference = args.work / "uninterrupted"
    began = run_logged([*command, "--out", str(reference)], reference.parent / "uninterrupted.log")
    duration = began.pop("end")
    ends = [*list(began.values())[1:], duration]
    lengths = {phase: end - start for (phase, start), end in zip(began.items(), ends)}
    print(f"uninterrupted run: {duration:.0f} s; phases " + ", ".join(f"{p} {s:.1f} s" for p, s in lengths.items()), flush=True)

    rng = random.Random(args.seed)
    kills: list[Kill] = []
    failures: list[str] = []
    chain = 0
    while len(kills) < args.kills:
        out = args.work / f"chain-{chain}"
        shutil.copytree(reference, out)
        resume = False
        for _ in range(min(args.per_chain, args.kills - len(kills))):
            phase = list(PHASES)[len(kills) % len(PHASES)]
            kill = run_and_kill(command, out, resume, phase, rng.uniform(0.0, lengths[phase]), chain)
            if kill is None:  # it finished before the moment came
                break
            kills.append(kill)
            if not kill.previous_intact:
                failures.append(f"chain {chain}: the previous model or result was not whole after a kill at {kill.after_s:.1f} s")
            resume = True
            print(f"chain {chain}: aimed at {phase}, killed after {kill.after_s:5.1f} s in '{kill.phase}'", flush=True)
        done = subprocess.run([*command, "--out", str(out), *(["--resume"] if resume else [])], capture_output=True, text=True)
        if done.returncode != 0:
            failures.append(f"chain {chain}: the resumed run failed: {done.stderr.strip().splitlines()[-1:]}")
        else:
            failures += [f"chain {chain}: {d}" for d in differences(reference, out)]
        chain += 1

    phases = sorted({k.phase for k in kills})
    lines = [f"kill -9 soak: {len(kills)} SIGKILLs over {chain} chains of `compress` on a tiny BERT (--cost flops, "
             f"evolutionary, 24 evaluations, ONNX Runtime); the uninterrupted run took {duration:.0f} s",
             "phases of the uninterrupted run: " + ", ".join(f"{p} {s:.1f} s" for p, s in lengths.items()),
             "each kill: the phase it was aimed at, when it came (seconds after the attempt started) and the last step "
             "the run had logged:"]
    lines += [f"  chain {k.chain}: {k.aimed_at:>11} {k.after_s:5.1f} s  {k.phase}" for k in kills]
    lines.append(f"steps hit: {len(phases)} distinct ({'; '.join(phases)})")
    lines.append("result: every chain ended with the uninterrupted run's plans, evaluations, held-out quality and files, "
                 "no leftovers, the previous model whole after every kill" if not failures else
                 "FAILED:\n" + "\n".join(f"  {f}" for f in failures))
    publish("kill_resume", "\n".join(lines), {"kills": [asdict(k) for k in kills], "chains": chain, "uninterrupted_s": duration,
                                              "phases_s": lengths, "failures": failures})
    return 1 if failures else 0


def run_logged(command: list[str], log: Path) -> dict[str, float]:
    """Runs the command to the end; when each phase began and "end", in seconds from its start."""
    began: dict[str, float] = {}
    with open(log, "w") as stderr:
        start = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        while process.poll() is None:
            for phase in PHASES:
                if phase not in began and phase_began(log, phase):
                    began[phase] = time.monotonic() - start
            time.sleep(POLL_S)
    if process.returncode != 0 or list(began) != list(PHASES):
        raise SystemExit(f"the uninterrupted run failed or logged phases {list(began)}; see {log}")
    return {**began, "end": time.monotonic() - start}


def phase_began(log: Path, phase: str) -> bool:
    marker = PHASES[phase]
    return any(line.split("] ", 1)[-1].startswith(marker) for line in log.read_text().splitlines() if line.startswith("["))\
        if marker else True


def run_and_kill(command: list[str], out: Path, resume: bool, phase: str, into_s: float, chain: int) -> Kill | None:
    """Starts the command and, `into_s` seconds after `phase` began, SIGKILLs it and its
    children; None if it finished first."""
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as stderr:
        start = time.monotonic()
        process = subprocess.Popen([*command, "--out", str(out), *(["--resume"] if resume else [])],
                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        while not phase_began(log, phase):
            if process.poll() is not None:
                return None
            time.sleep(POLL_S)
        try:
            process.wait(timeout=into_s)
            return None
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its latency workers too, as when the machine goes
            process.wait()
        after_s = time.monotonic() - start
    lines = [line.strip() for line in log.read_text().splitlines() if line.strip().startswith("[")]
    last = lines[-1].split("] ", 1)[1][:60] if lines else "starting (before the first log line)"
    return Kill(chain, phase, after_s, last, previous_intact(out))


def previous_intact(out: Path) -> bool:
    """The finished output the chain started from is still whole: the model's files and
    a result.json that parses."""
    try:
        CompressResult.from_file(out / "result.json")
    except Exception:
        return False
    return (out / "model" / "model.safetensors").is_file() and (out / "model" / "compression.json").is_file()


def differences(reference: Path, out: Path) -> list[str]:
    """What differs between an uninterrupted run's output and a resumed one's (timings
    aside, which no two runs share)."""
    found = []
    files = {str(p.relative_to(out)) for p in out.rglob("*")}
    expected = {str(p.relative_to(reference)) for p in reference.rglob("*")}
    if files != expected:
        found.append(f"files differ: extra {sorted(files - expected)[:5]}, missing {sorted(expected - files)[:5]}")
    left = sorted(f for f in files if any(mark in Path(f).name for mark in LEFTOVER_MARKS))
    if left:
        found.append(f"leftovers: {left[:5]}")
    want, got = CompressResult.from_file(reference / "result.json"), CompressResult.from_file(out / "result.json")
    for name, measured in want.searchers.items():
        other = got.searchers.get(name)
        if other is None or (other.levels, other.evaluations) != (measured.levels, measured.evaluations):
            found.append(f"{name}'s plan or evaluations differ")
        elif abs(other.cosine_heldout - measured.cosine_heldout) > 1e-6:
            found.append(f"{name}'s held-out cosine differs: {other.cosine_heldout} against {measured.cosine_heldout}")
    if json.loads((out / "model" / "compression.json").read_text())["plan"] != \
            json.loads((reference / "model" / "compression.json").read_text())["plan"]:
        found.append("the delivered model's plan differs")
    return found


if __name__ == "__main__":
    sys.exit(main())
