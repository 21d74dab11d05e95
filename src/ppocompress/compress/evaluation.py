"""`ppocompress evaluate`: quality and cost of a model, or of a plan applied to it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ppocompress.compress.cost import count_parameters, directory_bytes, measure_latencies, model_flops
from ppocompress.compress.export import save
from ppocompress.compress.models import LoadedModel
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.quality import embed, embedding_fidelity, kl_to_reference, lee_correlation, perplexity
from ppocompress.compress.text import TextSplits


def evaluate(dense: LoadedModel, texts: TextSplits, plan: CompressionPlan | None = None, recovery: str = "none",
             latency: bool = True, threads: int = 2, batch_size: int = 32, seq_len: int = 64) -> dict:
    """Metrics of the dense model, and of the compressed one when a plan is given.

    Quality is measured on texts.evaluation; recovery calibrates on texts.calibration.
    """
    candidate = compress(dense, plan, recovery, texts.calibration) if plan is not None else dense
    report: dict = {"model": dense.source, "model_type": dense.model_type, "recovery": recovery if plan else None,
                    "evaluation_texts": len(texts.evaluation)}
    with tempfile.TemporaryDirectory(prefix="ppocompress-eval-") as workdir:
        targets = [("dense", save(dense, Path(workdir) / "dense"), "torch")]
        if plan is not None:
            targets.append(("compressed", save(candidate, Path(workdir) / "compressed"), "torch"))
        for label, directory, _backend in targets:
            model = dense if label == "dense" else candidate
            report[label] = {
                "params": count_parameters(model.model),
                "size_bytes": directory_bytes(directory / "model.safetensors"),
                "flops_per_sequence": model_flops(model.model, seq_len),
                **_quality(model),
            }
        if plan is not None:
            report["compressed"].update(_fidelity(dense, candidate, texts.evaluation))
            report["plan"] = plan.to_dict()
        if latency:
            measured = measure_latencies(targets, rounds=3, batch_size=batch_size, seq_len=seq_len, threads=threads)
            for label, result in measured.items():
                report[label]["latency_ms"] = result.median_ms
            if plan is not None:
                report["compressed"]["speedup"] = measured["dense"].median_ms / measured["compressed"].median_ms
    return report


def _quality(model: LoadedModel) -> dict:
    if model.is_causal:
        return {}
    return {f"lee_{k}": v for k, v in lee_correlation(model.model, model.tokenizer).items()}


def _fidelity(dense: LoadedModel, candidate: LoadedModel, texts: list[str]) -> dict:
    if dense.is_causal:
        return {
            "perplexity_dense": perplexity(dense.model, dense.tokenizer, texts),
            "perplexity": perplexity(candidate.model, candidate.tokenizer, texts),
            "kl_to_dense": kl_to_reference(dense.model, candidate.model, candidate.tokenizer, texts),
        }
    reference = embed(dense.model, dense.tokenizer, texts)
    return embedding_fidelity(reference, embed(candidate.model, candidate.tokenizer, texts))
