"""SmolLM2-135M served without search: dense PyTorch fp32 against the folders ppocompress
exports for OpenVINO GenAI (float, int8 and int4 weights), and PyTorch's int8 weights,
timed side by side in one run. These are the no-effort alternatives a searched decoder
plan has to beat.

Decode time per token (batch 1, 128 greedy tokens after a 128-token prompt, LLMPipeline's
own TPOT on OpenVINO), prefill time, weight bytes, and held-out next-token quality (KL to
dense PyTorch fp32, top-1 agreement, perplexity over the dense model's).

    python benchmarks/decoder_serving.py [--rounds 3]

Writes benchmarks/results/decoder_serving.{txt,json}.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from ppocompress.compress import Precision, load_model
from ppocompress.compress.commands.bench import Variant, run_bench
from ppocompress.compress.data.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES, load_splits, subset
from ppocompress.compress.measure.timing import TimingSetup
from ppocompress.compress.recovery.method import Recovery
from publish import publish

VARIANTS = [
    Variant("dense"),
    Variant("int8 weights", weights=Precision.INT8),
    Variant("int4 weights, head int8", weights=Precision.INT4, head=Precision.INT8),
    Variant("int4 weights, head int4", weights=Precision.INT4),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup = replace(TimingSetup.for_model(causal=True, threads=2), rounds=args.rounds)
    dense = load_model("smollm2")
    texts = subset(load_splits(None), CALIBRATION_PASSAGES, EVALUATION_PASSAGES)
    results = run_bench(dense, texts, ["torch", "openvino"], VARIANTS, recovery=Recovery.NONE, setup=setup)
    dense_ppl = next(r.perplexity_heldout for r in results if r.name == "dense" and r.runtime == "torch")
    lines = [f"SmolLM2-135M, batch 1, {setup.new_tokens} new tokens after a {setup.seq_len}-token prompt, "
             f"{setup.threads} threads, {setup.rounds} interleaved rounds, {setup.statistic}; speedups against dense "
             "PyTorch fp32 in the same run; quality on held-out passages against dense PyTorch fp32",
             f"{'model':26} {'runtime':9} {'ms/token':>8} {'decode':>7} {'prefill':>7} {'ppl ratio':>9} {'KL':>6} "
             f"{'top-1':>6} {'MB':>6}"]
    for r in results:
        lines.append(f"{r.name:26} {r.runtime:9} {r.latency_ms:8.2f} {r.speedup:6.2f}x {r.prefill_speedup:6.2f}x "
                     f"{r.perplexity_heldout / dense_ppl:9.3f} {r.kl_heldout:6.3f} {r.top1_agreement:6.3f} "
                     f"{r.size_bytes / 1e6:6.1f}")
    publish("decoder_serving", "\n".join(lines), {"timing": setup.to_dict(), "variants": [r.to_dict() for r in results]})


if __name__ == "__main__":
    main()
