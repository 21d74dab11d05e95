"""How models are timed: one TimingSetup, and side-by-side latencies in worker processes.

Every model is timed in a fresh process (latency_worker), because torch's OpenMP pool,
ONNX Runtime's and OpenVINO's thread pools distort each other when they share one. On a
shared machine only latencies measured side by side in interleaved rounds are comparable,
and other tenants only ever slow a run down, so the statistic is a low percentile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ppocompress.compress.runtimes import get_runtime
from ppocompress.errors import UserError

STATISTICS = ("p10", "median")
WORKER_TIMEOUT_S = 600.0


def usable_cores() -> int:
    """The cores this process may run on (a container or taskset may give fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Threads a model is timed with unless told otherwise: the cores of the smallest CPU server
# the tool is meant for, so that timings are comparable across machines (fewer where the
# run is given fewer cores, which check_threads would refuse).
DEFAULT_THREADS = min(2, usable_cores())


def check_threads(threads: int) -> None:
    """Refuses more timing threads than this process may run on: the extra threads would
    share cores, and every latency would measure the contention, not the model. Not a
    TimingSetup check, because a result timed on a larger machine must still load here."""
    cores = usable_cores()
    if threads > cores:
        raise UserError(f"--threads {threads} is more than the {cores} core{'s' if cores > 1 else ''} this machine gives "
                        f"the run; use --threads {cores}" + (" or fewer" if cores > 1 else ""))


@dataclass(frozen=True)
class TimingSetup:
    """The one description of a timing: the cost table, the reference anchoring, delivery,
    `bench` and `evaluate` all take it, so their numbers are comparable.

    p10 rather than the median: other tenants of a shared machine only ever slow a run
    down, so a low percentile follows the machine's own speed more closely.

    new_tokens = 0 times a forward pass over batch_size x seq_len tokens (encoders).
    new_tokens > 0 times generation (causal LMs): a prompt of seq_len tokens in one pass
    (prefill), then new_tokens greedy tokens one at a time with the KV cache (decode);
    the latency is then the decode time per token, and the prefill time is kept beside it."""

    batch_size: int = 32
    seq_len: int = 64
    new_tokens: int = 0
    threads: int = DEFAULT_THREADS
    rounds: int = 3  # interleaved rounds; each target runs once a round in a fresh process
    repeats: int = 3  # timed passes a process, after `warmup` untimed ones
    warmup: int = 2
    statistic: str = "p10"

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "threads", "rounds", "repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"timing {name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.new_tokens < 0:
            raise UserError(f"timing new tokens must be >= 0, got {self.new_tokens}")
        if self.warmup < 0:
            raise UserError(f"timing warm-up must be >= 0, got {self.warmup}")
        if self.statistic not in STATISTICS:
            raise UserError(f"timing statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")

    @property
    def generates(self) -> bool:
        return self.new_tokens > 0

    @classmethod
    def for_model(cls, causal: bool, threads: int) -> "TimingSetup":
        """The default timing of a kind of model: batches of sentences for encoders; for
        causal LMs, one sequence generating 128 tokens after a 128-token prompt."""
        if causal:
            return cls(batch_size=1, seq_len=128, new_tokens=128, threads=threads, repeats=2, warmup=1)
        return cls(threads=threads)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LatencyResult:
    """One target's times over all its rounds: of a forward pass, or (generation) of
    decoding one token, with the prompt's prefill time beside it."""

    runtime: str
    ms: float  # the setup's statistic
    p10_ms: float
    median_ms: float
    p90_ms: float
    timings: int
    prefill_ms: float | None = None  # generation only: the setup's statistic of the prompt's pass
    round_ms: list[float] = field(default_factory=list)  # the setup's statistic in each interleaved round

    @property
    def spread(self) -> float:
        """(p90 - p10) / p10: how unquiet the machine was while this target ran."""
        return (self.p90_ms - self.p10_ms) / self.p10_ms

    def to_dict(self) -> dict:
        return asdict(self)

    def tokens_per_s(self, setup: TimingSetup) -> tuple[float, float | None]:
        """(decode tokens/s, prefill tokens/s) of a generation timing; (tokens/s through a
        forward pass, None) otherwise."""
        if not setup.generates:
            return setup.batch_size * setup.seq_len * 1000.0 / self.ms, None
        return setup.batch_size * 1000.0 / self.ms, setup.batch_size * setup.seq_len * 1000.0 / self.prefill_ms


def _statistic(times: list[float], statistic: str) -> float:
    return float(np.percentile(times, 10)) if statistic == "p10" else float(np.median(times))


def summarise(rounds: list[list[float]], runtime: str, statistic: str, prefill: list[float] | None = None) -> LatencyResult:
    """A target's LatencyResult from its times, a list per interleaved round."""
    times = [t for round_times in rounds for t in round_times]
    p10, median, p90 = (float(v) for v in np.percentile(times, [10, 50, 90]))
    return LatencyResult(runtime, p10 if statistic == "p10" else median, p10, median, p90, len(times),
                         prefill_ms=_statistic(prefill, statistic) if prefill else None,
                         round_ms=[_statistic(round_times, statistic) for round_times in rounds])


def speedups_over_rounds(reference: LatencyResult, model: LatencyResult) -> list[float]:
    """The model's speedup over the reference in each round: timings taken back to back,
    under the same load, so their spread says how far load moved the headline number."""
    return [r / m for r, m in zip(reference.round_ms, model.round_ms)]


def run_worker(path: Path, runtime: str, setup: TimingSetup, seed: int = 0) -> dict[str, list[float]]:
    """From a fresh worker process: {"times_ms": one time per repeat (a forward pass, or
    decode per token)} plus, when generating, {"prefill_ms": the prompt's passes}."""
    command = [
        sys.executable, "-m", "ppocompress.compress.measure.latency_worker",
        "--runtime", runtime, "--target", str(path),
        "--batch-size", str(setup.batch_size), "--seq-len", str(setup.seq_len), "--threads", str(setup.threads),
        "--warmup", str(setup.warmup), "--repeats", str(setup.repeats), "--seed", str(seed),
        "--new-tokens", str(setup.new_tokens),
    ]  # fmt: skip
    # OpenMP sizes its pool from the environment at start-up; match the threads asked for.
    env = {**os.environ, "OMP_NUM_THREADS": str(setup.threads), "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"latency worker for {path} ({runtime}) took longer than {WORKER_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else f"exit code {done.returncode}"
        if done.returncode == 2:  # the worker's UserError: bad input, not a crash
            raise UserError(message)
        raise RuntimeError(f"latency worker for {path} ({runtime}) failed: {message}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_latencies(targets: list[tuple[str, str | Path, str]], setup: TimingSetup, seed: int = 0,
                      on_round=None) -> dict[str, LatencyResult]:
    """Side-by-side latencies of (label, artifact, runtime) triples, keyed by label.

    Each round runs every target once (A, B, C, A, B, C, ...), each time in a fresh
    worker: a load per round costs time, but it spreads every target over the whole
    window, so drifts in machine speed hit all targets alike."""
    labels = [label for label, _, _ in targets]
    if len(set(labels)) != len(labels):
        raise UserError(f"latency labels must be unique, got {labels}")
    checked = [(label, get_runtime(runtime).check_artifact(Path(target)), runtime) for label, target, runtime in targets]
    times: dict[str, list[list[float]]] = {label: [] for label in labels}
    prefill: dict[str, list[float]] = {label: [] for label in labels}
    for round_index in range(setup.rounds):
        for label, path, runtime in checked:
            measured = run_worker(path, runtime, setup, seed)
            times[label].append(measured["times_ms"])
            prefill[label] += measured.get("prefill_ms", [])
        if on_round is not None:
            on_round(round_index + 1)
    return {label: summarise(times[label], runtime, setup.statistic, prefill[label]) for label, _, runtime in checked}
