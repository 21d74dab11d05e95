"""Times one model's forward pass in a process of its own and prints one JSON line.

timing.measure_latencies starts this module with `python -m`; a process per measurement
keeps the runtimes' thread pools from competing. Exit code 2 means bad input (a
UserError, message on the last stderr line). Only the runtime being timed is imported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ppocompress.compress.runtimes import RUNTIMES, get_runtime
from ppocompress.errors import UserError

# In BERT-style vocabularies the first ids are [PAD], [unused...] and other special
# tokens; timing ordinary tokens needs ids above them.
_FIRST_ORDINARY_ID = 1000
_WARMUP_NEW_TOKENS = 8


def random_ids(vocab_size: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
    low = _FIRST_ORDINARY_ID if vocab_size > _FIRST_ORDINARY_ID else 0
    return np.random.default_rng(seed).integers(low, vocab_size, size=(batch_size, seq_len), dtype=np.int64)


def time_calls(run: Callable[[], object], warmup: int, repeats: int) -> list[float]:
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
    parser.add_argument("--runtime", choices=list(RUNTIMES), required=True)
    parser.add_argument("--target", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        session = get_runtime(args.runtime).session(args.target, args.threads)
        input_ids = random_ids(session.vocab_size, args.batch_size, args.seq_len, args.seed)
        if args.new_tokens > 0:
            times = time_generation(session, input_ids, args.new_tokens, args.warmup, args.repeats)
        else:
            attention_mask = np.ones_like(input_ids)
            times = {"times_ms": time_calls(lambda: session(input_ids, attention_mask), args.warmup, args.repeats)}
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps({"runtime": args.runtime, **times}))
    return 0


def time_generation(session, input_ids: np.ndarray, new_tokens: int, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Per repeat, the decode time per token and the prompt's prefill time, in ms; warm-up
    generations are short (they only fill caches and allocators)."""
    if not hasattr(session, "generate_timed"):
        raise UserError("this runtime cannot generate with a KV cache; time causal LMs on the torch runtime")
    for _ in range(warmup):
        session.generate_timed(input_ids, min(new_tokens, _WARMUP_NEW_TOKENS))
    prefill, decode = [], []
    for _ in range(repeats):
        prefill_s, decode_s = session.generate_timed(input_ids, new_tokens)
        prefill.append(prefill_s * 1000.0)
        decode.append(decode_s * 1000.0 / new_tokens)
    return {"times_ms": decode, "prefill_ms": prefill}


if __name__ == "__main__":
    sys.exit(main())
