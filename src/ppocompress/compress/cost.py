"""What a model costs: parameters, bytes, FLOPs and measured latency.

Latency is measured in a fresh subprocess per measurement (latency_worker), because
torch's OpenMP pool and ONNX Runtime's thread pool distort each other when they live
in one process. Timing on a shared VM is noisy (the research runs swung 4x between
runs), so only latencies measured side by side by measure_latencies are comparable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ppocompress.compress.architecture import layer_table
from ppocompress.compress.quantize import is_int8_linear
from ppocompress.errors import UserError

BACKENDS = ("torch", "onnxruntime")
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)


def _int8_linears(model: nn.Module) -> list[nn.Module]:
    """torch dynamic int8 Linear modules: their packed weights are not parameters()."""
    return [m for m in model.modules() if is_int8_linear(m)]


def count_parameters(model: nn.Module) -> int:
    """Weights and biases, tied weights once, int8 Linear weights included.

    Quantization changes bytes, not the count, so a quantized model reports the same
    number as its float original.
    """
    total = sum(p.numel() for p in model.parameters())
    for module in _int8_linears(model):
        bias = module.bias()
        total += module.weight().numel() + (0 if bias is None else bias.numel())
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes the weights occupy: element size per float weight; per int8 Linear, 1 byte
    per weight plus a 4-byte scale and a 1-byte zero point per channel (or one pair per
    tensor) and the float bias. Buffers (position ids, masks) are not weights."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in _int8_linears(model):
        weight, bias = module.weight(), module.bias()
        scales = weight.q_per_channel_scales().numel() if weight.qscheme() in _PER_CHANNEL else 1
        total += weight.numel() + scales * (4 + 1)
        if bias is not None:
            total += bias.numel() * bias.element_size()
    return total


def directory_bytes(path: str | Path) -> int:
    """Size on disk of a saved model: all files under a directory, or one file (.onnx)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    raise UserError(f"{path} does not exist; pass a saved model directory or an .onnx file")


def model_flops(model: nn.Module, seq_len: int) -> int:
    """FLOPs (2 per multiply-add) to run one sequence of seq_len tokens.

    Counted: every layer's linear projections, the attention scores and weighted sum
    (over all seq_len keys, as layer_table counts them), and the output head if the
    model has one (a causal LM's lm_head, for every position). Not counted: embedding
    lookups, layer norms, activations, softmax and biases (all linear in the hidden
    size, small next to the matrix products), and BERT's pooler, which the exported
    graph drops.
    """
    per_token = sum(row.flops_per_token for row in layer_table(model, seq_len))
    head = model.get_output_embeddings()  # None for a bare encoder
    if head is not None:
        weight = head.weight() if callable(head.weight) else head.weight  # int8 Linear: a method
        per_token += 2 * weight.numel()
    return per_token * seq_len


@dataclass
class LatencyResult:
    """One target's forward-pass time for a batch, over all timed runs."""

    backend: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    batch_size: int
    seq_len: int
    threads: int
    repeats: int  # timed runs the percentiles are over

    def to_dict(self) -> dict:
        return asdict(self)


def _check_target(target: str | Path, backend: str) -> Path:
    path = Path(target).expanduser()
    if backend == "torch":
        if not path.is_dir():
            raise UserError(f"{path} is not a model directory; the torch backend times a directory saved with save_pretrained or export")
    elif backend == "onnxruntime":
        if not path.is_file() or path.suffix != ".onnx":
            raise UserError(f"{path} is not an .onnx file; the onnxruntime backend times an exported .onnx file")
    else:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return path


def _run_worker(path: Path, backend: str, batch_size: int, seq_len: int, threads: int, warmup: int, repeats: int, seed: int, timeout: float) -> list[float]:
    """Times in ms of `repeats` forward passes, from a fresh worker process."""
    command = [
        sys.executable, "-m", "ppocompress.compress.latency_worker",
        "--backend", backend, "--target", str(path),
        "--batch-size", str(batch_size), "--seq-len", str(seq_len), "--threads", str(threads),
        "--warmup", str(warmup), "--repeats", str(repeats), "--seed", str(seed),
    ]  # fmt: skip
    # OpenMP sizes its pool from the environment at start-up; match torch.set_num_threads.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"latency worker for {path} ({backend}) took longer than {timeout:.0f} s; raise timeout or lower repeats") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        message = lines[-1] if lines else f"exit code {done.returncode}"
        if done.returncode == 2:  # the worker's UserError: bad input, not a crash
            raise UserError(message)
        raise RuntimeError(f"latency worker for {path} ({backend}) failed: {message}")
    return json.loads(done.stdout.strip().splitlines()[-1])["times_ms"]


def _summarise(times: list[float], backend: str, batch_size: int, seq_len: int, threads: int) -> LatencyResult:
    p10, median, p90 = (float(v) for v in np.percentile(times, [10, 50, 90]))
    return LatencyResult(backend, median, p10, p90, batch_size, seq_len, threads, len(times))


def measure_latency(
    target: str | Path,
    backend: str,
    batch_size: int = 32,
    seq_len: int = 64,
    threads: int = 2,
    warmup: int = 3,
    repeats: int = 10,
    timeout: float = 600.0,
    seed: int = 0,
) -> LatencyResult:
    """Forward-pass latency of one model on random token ids, in its own process.

    target is a model directory for backend "torch", an .onnx file for "onnxruntime".
    To compare models, use measure_latencies: separate calls are minutes apart and the
    machine's speed drifts in between.
    """
    path = _check_target(target, backend)
    times = _run_worker(path, backend, batch_size, seq_len, threads, warmup, repeats, seed, timeout)
    return _summarise(times, backend, batch_size, seq_len, threads)


def measure_latencies(
    targets: list[tuple[str, str | Path, str]],
    rounds: int = 5,
    batch_size: int = 32,
    seq_len: int = 64,
    threads: int = 2,
    warmup: int = 2,
    repeats: int = 3,
    timeout: float = 600.0,
    seed: int = 0,
) -> dict[str, LatencyResult]:
    """Side-by-side latencies of (label, target, backend) triples, keyed by label.

    Each round runs every target once (A, B, C, A, B, C, ...), each time in a fresh
    worker that warms up and then times `repeats` passes; a label's percentiles are over
    all its rounds * repeats timings. A fresh process per round (rather than one long
    process per target) costs a model load each time, but it spreads every target over
    the whole measuring window, so slow drifts in machine speed (other tenants, the 4x
    swings seen on this VM) hit all targets alike instead of whichever ran during them.
    """
    labels = [label for label, _, _ in targets]
    if len(set(labels)) != len(labels):
        raise UserError(f"latency labels must be unique, got {labels}")
    checked = [(label, _check_target(target, backend), backend) for label, target, backend in targets]
    times: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(rounds):
        for label, path, backend in checked:
            times[label] += _run_worker(path, backend, batch_size, seq_len, threads, warmup, repeats, seed, timeout)
    return {label: _summarise(times[label], backend, batch_size, seq_len, threads) for label, _, backend in checked}
