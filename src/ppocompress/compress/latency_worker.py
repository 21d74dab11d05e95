"""Times one model's forward pass in a process of its own and prints one JSON line.

cost.measure_latency starts this module with `python -m`; a process per measurement
keeps torch's and ONNX Runtime's thread pools from competing. Exit code 2 means bad
input (a UserError, message on the last stderr line).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ppocompress.compress.export import load
from ppocompress.compress.models import load_model
from ppocompress.compress.onnx_export import onnx_outputs, onnx_session, takes_token_type_ids
from ppocompress.errors import UserError

# In BERT-style vocabularies the first ids are [PAD], [unused...] and other special
# tokens; timing ordinary tokens needs ids above them.
_FIRST_ORDINARY_ID = 1000


def _random_ids(vocab_size: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
    low = _FIRST_ORDINARY_ID if vocab_size > _FIRST_ORDINARY_ID else 0
    return np.random.default_rng(seed).integers(low, vocab_size, size=(batch_size, seq_len), dtype=np.int64)


def _torch_runner(target: Path, batch_size: int, seq_len: int, threads: int, seed: int) -> Callable[[], object]:
    torch.set_num_threads(threads)
    if (target / "compression.json").is_file():
        loaded = load(target)
    else:
        loaded = load_model(str(target))
    model = loaded.model.eval()
    input_ids = torch.from_numpy(_random_ids(model.config.vocab_size, batch_size, seq_len, seed))
    inputs: dict[str, object] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if takes_token_type_ids(model):
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    if loaded.is_causal:
        inputs["use_cache"] = False  # the ONNX graph has no KV cache either

    def run() -> object:
        with torch.inference_mode():
            return model(**inputs)

    return run


def _onnx_runner(target: Path, batch_size: int, seq_len: int, threads: int, seed: int) -> Callable[[], object]:
    session = onnx_session(target, threads)
    vocab_size = session.get_modelmeta().custom_metadata_map.get("vocab_size")
    if vocab_size is None:
        raise UserError(f"{target} has no vocab_size metadata; export it with ppocompress (export_onnx)")
    input_ids = _random_ids(int(vocab_size), batch_size, seq_len, seed)
    attention_mask = np.ones_like(input_ids)
    return lambda: onnx_outputs(session, input_ids, attention_mask)


def _time_forward(run: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Milliseconds per call, after warm-up calls that fill caches and allocators."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], required=True)
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    runner = _torch_runner if args.backend == "torch" else _onnx_runner
    try:
        run = runner(args.target, args.batch_size, args.seq_len, args.threads, args.seed)
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    times = _time_forward(run, args.warmup, args.repeats)
    print(json.dumps({"backend": args.backend, "times_ms": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
