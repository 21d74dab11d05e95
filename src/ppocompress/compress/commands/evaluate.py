"""`ppocompress evaluate`: quality and cost of a model, or of a plan applied to it, on a runtime."""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from ppocompress.compress.data.text import TextSplits
from ppocompress.compress.files.saved import load
from ppocompress.compress.files.sentence_transformers_folder import served_artifact
from ppocompress.compress.measure.cost import count_parameters, model_flops
from ppocompress.compress.measure.quality import (
    CAUSAL_HELD_OUT,
    HELD_OUT_MAX_LENGTH,
    NextTokenReference,
    embed,
    judge_session,
    lee_correlation,
)
from ppocompress.compress.measure.timing import TimingSetup, measure_latencies
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.recovery.distillation import DistillConfig
from ppocompress.compress.runtimes import get_runtime, no_generation
from ppocompress.errors import UserError


def evaluate(dense: LoadedModel, texts: TextSplits, plan: CompressionPlan | None = None, recovery: str = "none",
             runtime: str = "torch", latency: bool = True, setup: TimingSetup = TimingSetup(),
             distillation: DistillConfig = DistillConfig(), distill_texts: list[str] | None = None,
             delivered: Path | None = None) -> dict:
    """Metrics of the dense model, and of the compressed one when a plan is given (or a
    delivered folder, judged from the files it serves `runtime` from); the candidate
    (compressed, else dense) is exported for `runtime` and judged as it runs there. Quality
    is measured on texts.evaluation; least squares fits texts.calibration, distillation
    `distill_texts` (default the same), both choosing on texts.validation."""
    if dense.is_causal and no_generation(get_runtime(runtime)):
        raise UserError(no_generation(get_runtime(runtime)) + "; pass --runtime torch")
    candidate = dense
    if delivered is not None:
        candidate = load(delivered)
        plan = candidate.plan
    elif plan is not None:
        candidate = compress(dense, plan, recovery, texts.calibration, quantize=False, validation=texts.validation,
                             distillation=distillation, distill_texts=distill_texts, progress=True)
    report: dict = {"model": dense.source, **({"delivered": str(delivered)} if delivered is not None else {}),
                    "model_type": dense.model_type, "recovery": recovery if plan and delivered is None else None,
                    "runtime": runtime, "timing": setup.to_dict(),
                    "evaluation_texts": min(len(texts.evaluation), CAUSAL_HELD_OUT) if dense.is_causal else len(texts.evaluation)}
    label = "compressed" if plan is not None else "dense"
    with tempfile.TemporaryDirectory(prefix="ppocompress-eval-") as workdir:
        work = Path(workdir)
        reference_dir = get_runtime("torch").export(dense, work / "reference", [])
        artifact = (served(delivered, runtime) if delivered is not None
                    else get_runtime(runtime).export(candidate, work / "candidate", texts.calibration))
        report["dense"] = {"params": count_parameters(dense.model), "size_bytes": get_runtime("torch").size_bytes(reference_dir),
                           "flops_per_sequence": model_flops(dense.model, setup.seq_len), **_lee(dense)}
        if plan is not None:
            if candidate.distillation is not None:
                report["distillation"] = asdict(candidate.distillation)
            report["compressed"] = {"params": count_parameters(candidate.model), "size_bytes": get_runtime(runtime).size_bytes(artifact),
                                    "flops_per_sequence": model_flops(candidate.model, setup.seq_len)}
            report["plan"] = plan.to_dict()
        report[label].update(_fidelity(dense, candidate, get_runtime(runtime).session(artifact), texts.evaluation))
        if latency:
            measured = measure_latencies([("reference", reference_dir, "torch"), ("candidate", artifact, runtime)], setup)
            report["dense"]["latency_torch_fp32_ms"] = measured["reference"].ms
            report[label]["latency_ms"] = measured["candidate"].ms
            report[label]["speedup"] = measured["reference"].ms / measured["candidate"].ms
            if setup.generates:  # latencies are per decoded token; tokens/s is what users compare
                for name, key in (("reference", "dense"), ("candidate", label)):
                    decode, prefill = measured[name].tokens_per_s(setup)
                    suffix = "_torch_fp32" if name == "reference" and plan is not None else ""
                    report[key][f"decode_tokens_per_s{suffix}"], report[key][f"prefill_tokens_per_s{suffix}"] = decode, prefill
    return report


def served(delivered: Path, runtime: str) -> Path:
    """The model a delivered folder serves `runtime` from, or a UserError naming what is missing."""
    path = served_artifact(delivered, runtime)
    if not path.exists():
        raise UserError(f"{delivered} holds no model for {runtime} ({path} is missing); "
                        "evaluate it on the runtime it was delivered for, or with --runtime torch")
    return get_runtime(runtime).check_artifact(path)


def _lee(model: LoadedModel) -> dict:
    if model.is_causal:
        return {}
    return {f"lee_{k}": v for k, v in lee_correlation(model.model, model.tokenizer).items()}


def _fidelity(dense: LoadedModel, candidate: LoadedModel, session, texts: list[str]) -> dict:
    """How the candidate, as its runtime runs it, compares with dense PyTorch fp32."""
    if dense.is_causal:  # as the torch runtime serves it: causal LMs generate there
        reference = NextTokenReference(dense.model, dense.tokenizer, texts[:CAUSAL_HELD_OUT])
        compared = reference.compare(session.model)
        return {"perplexity_dense": reference.compare(dense.model).perplexity, "perplexity": compared.perplexity,
                "kl_to_dense": compared.kl, "top1_agreement": compared.top1_agreement}
    reference = embed(dense.model, dense.tokenizer, texts, max_length=HELD_OUT_MAX_LENGTH)
    return judge_session(session, dense.model, dense.tokenizer, texts, reference)
