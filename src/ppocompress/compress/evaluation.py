"""`ppocompress evaluate`: quality and cost of a model, or of a plan applied to it, on a runtime."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ppocompress.compress.cost import count_parameters, model_flops
from ppocompress.compress.models import LoadedModel
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.quality import (
    HELD_OUT_MAX_LENGTH,
    embed,
    judge_session,
    kl_to_reference,
    lee_correlation,
    perplexity,
)
from ppocompress.compress.runtimes import get_runtime
from ppocompress.compress.text import TextSplits
from ppocompress.compress.timing import TimingSetup, measure_latencies


def evaluate(dense: LoadedModel, texts: TextSplits, plan: CompressionPlan | None = None, recovery: str = "none",
             runtime: str = "torch", latency: bool = True, setup: TimingSetup = TimingSetup()) -> dict:
    """Metrics of the dense model, and of the compressed one when a plan is given; the
    candidate (compressed, else dense) is exported for `runtime` and judged as it runs
    there. Quality is measured on texts.evaluation; recovery calibrates on texts.calibration."""
    candidate = compress(dense, plan, recovery, texts.calibration, quantize=False) if plan is not None else dense
    report: dict = {"model": dense.source, "model_type": dense.model_type, "recovery": recovery if plan else None,
                    "runtime": runtime, "evaluation_texts": len(texts.evaluation), "timing": setup.to_dict()}
    label = "compressed" if plan is not None else "dense"
    with tempfile.TemporaryDirectory(prefix="ppocompress-eval-") as workdir:
        work = Path(workdir)
        reference_dir = get_runtime("torch").export(dense, work / "reference", [])
        artifact = get_runtime(runtime).export(candidate, work / "candidate", texts.calibration)
        report["dense"] = {"params": count_parameters(dense.model), "size_bytes": get_runtime("torch").size_bytes(reference_dir),
                           "flops_per_sequence": model_flops(dense.model, setup.seq_len), **_lee(dense)}
        if plan is not None:
            report["compressed"] = {"params": count_parameters(candidate.model), "size_bytes": get_runtime(runtime).size_bytes(artifact),
                                    "flops_per_sequence": model_flops(candidate.model, setup.seq_len)}
            report["plan"] = plan.to_dict()
        report[label].update(_fidelity(dense, candidate, get_runtime(runtime).session(artifact), texts.evaluation))
        if latency:
            measured = measure_latencies([("reference", reference_dir, "torch"), ("candidate", artifact, runtime)], setup)
            report["dense"]["latency_torch_fp32_ms"] = measured["reference"].ms
            report[label]["latency_ms"] = measured["candidate"].ms
            report[label]["speedup"] = measured["reference"].ms / measured["candidate"].ms
    return report


def _lee(model: LoadedModel) -> dict:
    if model.is_causal:
        return {}
    return {f"lee_{k}": v for k, v in lee_correlation(model.model, model.tokenizer).items()}


def _fidelity(dense: LoadedModel, candidate: LoadedModel, session, texts: list[str]) -> dict:
    """How the candidate, as its runtime runs it, compares with dense PyTorch fp32."""
    if dense.is_causal:  # measured in PyTorch: runtimes return logits without a cache, fine for quality
        return {
            "perplexity_dense": perplexity(dense.model, dense.tokenizer, texts),
            "perplexity": perplexity(candidate.model, candidate.tokenizer, texts),
            "kl_to_dense": kl_to_reference(dense.model, candidate.model, candidate.tokenizer, texts),
        }
    reference = embed(dense.model, dense.tokenizer, texts, max_length=HELD_OUT_MAX_LENGTH)
    return judge_session(session, dense.model, dense.tokenizer, texts, reference)
