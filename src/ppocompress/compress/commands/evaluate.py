"""`ppocompress evaluate`: quality and cost of a model, or of a plan applied to it, on a runtime."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ppocompress.compress.commands.runtime_choice import check_runtime, runtimes_for
from ppocompress.compress.data.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES, TextSplits, load_splits, subset
from ppocompress.compress.files.description import is_saved_model, saved_source
from ppocompress.compress.files.saved import load
from ppocompress.compress.files.sentence_transformers_folder import served_artifact
from ppocompress.compress.measure.cost import count_parameters, model_flops
from ppocompress.compress.measure.quality import (
    CAUSAL_HELD_OUT,
    HELD_OUT_MAX_LENGTH,
    NextTokenReference,
    embed,
    judge_retrieval,
    judge_session,
    lee_correlation,
    retrieval_reference,
)
from ppocompress.compress.measure.retrieval import RetrievalQuality, RetrievalReference
from ppocompress.compress.measure.timing import DEFAULT_THREADS, LatencyResult, TimingSetup, check_threads, measure_latencies
from ppocompress.compress.models.loading import LoadedModel, load_model
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.recovery.distillation import DistillConfig, DistillReport
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import get_runtime, no_generation
from ppocompress.errors import UserError


@dataclass
class ModelMetrics(RetrievalQuality):
    """One model's measurements in an evaluation. What it has not (an encoder's perplexity,
    a causal LM's cosines, latencies when not timed) is None, and left out of to_dict().
    Retrieval (RetrievalQuality's fields) is over the whole evaluation split; the dense
    model's, when it is not the one judged, is its task score in PyTorch, its neighbours
    being the reference."""

    params: int
    size_bytes: int
    flops_per_sequence: int
    # Encoders. The Lee correlation of the dense model in PyTorch, and of the judged model as its
    # runtime runs it; the cosines and pair-similarity ranking compare its embeddings with dense PyTorch fp32's.
    lee_pearson: float | None = None
    lee_spearman: float | None = None
    mean_cosine: float | None = None
    min_cosine: float | None = None
    pairsim_spearman: float | None = None
    # Causal LMs: next-token distributions against dense PyTorch fp32's.
    perplexity_dense: float | None = None
    perplexity: float | None = None
    kl_to_dense: float | None = None
    top1_agreement: float | None = None
    # Latency, timed side by side with dense PyTorch fp32; a generating model's tokens/s too.
    latency_torch_fp32_ms: float | None = None  # the dense model's
    latency_ms: float | None = None  # the judged model's, on the runtime
    speedup: float | None = None  # of the judged model against dense PyTorch fp32
    decode_tokens_per_s_torch_fp32: float | None = None  # the dense model's, beside a compressed one
    prefill_tokens_per_s_torch_fp32: float | None = None
    decode_tokens_per_s: float | None = None  # the judged model's
    prefill_tokens_per_s: float | None = None

    def to_dict(self) -> dict:
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass(kw_only=True)
class EvaluationReport:
    """An evaluation on one runtime: the dense model, and the compressed one when a plan or a
    delivered folder was given (the compressed one is then the model judged on the runtime)."""

    model: str  # the dense model, as named
    delivered: str | None = None  # the delivered folder judged, if one was
    model_type: str
    recovery: str | None  # how a plan's model was recovered; None without a plan, or for a delivered folder
    runtime: str
    timing: TimingSetup
    evaluation_texts: int  # held-out passages the quality is measured on
    dense: ModelMetrics
    distillation: DistillReport | None = None
    compressed: ModelMetrics | None = None
    plan: CompressionPlan | None = None

    @property
    def judged(self) -> ModelMetrics:
        """The metrics of the model exported for the runtime: the compressed one, else the dense one."""
        return self.dense if self.compressed is None else self.compressed

    def to_dict(self) -> dict:
        """What --json prints: what this evaluation has not is left out, except `recovery` (null)."""
        data = {**asdict(self), "dense": self.dense.to_dict()}
        if self.compressed is not None:
            data["compressed"] = self.compressed.to_dict()
        return {name: value for name, value in data.items() if value is not None or name == "recovery"}

    @classmethod
    def from_dict(cls, data: dict) -> EvaluationReport:
        """The report to_dict() gave (what --json printed)."""
        typed = {"timing": TimingSetup(**data["timing"]), "dense": ModelMetrics(**data["dense"])}
        if "compressed" in data:
            typed["compressed"] = ModelMetrics(**data["compressed"])
        if "distillation" in data:
            typed["distillation"] = DistillReport.from_dict(data["distillation"])
        if "plan" in data:
            typed["plan"] = CompressionPlan.from_dict(data["plan"])
        return cls(**{**data, **typed})


def evaluate_command(model: str | None = None, plan: Path | None = None, text: Path | None = None, recovery: str = Recovery.NONE,
                     recover_minutes: float | None = None, runtime: str = "torch", latency: bool = True,
                     threads: int = DEFAULT_THREADS, trust_remote_code: bool = False, dense_model: str | None = None,
                     log: Callable[[str], None] = print) -> list[EvaluationReport]:
    """`ppocompress evaluate`: a report for each runtime --runtime names (auto: each available
    one, those skipped named to `log`). Every option is checked before the model loads.
    `model` may be a delivered folder, judged against `dense_model` (default: the model its
    compression.json names)."""
    check_runtime(runtime)
    TimingSetup(threads=threads)  # bad values fail before the model loads
    check_threads(threads)
    recovery = Recovery.parse(recovery)
    distillation = DistillConfig() if recover_minutes is None else DistillConfig(minutes=recover_minutes)
    splits = load_splits(text)
    texts = subset(splits, CALIBRATION_PASSAGES, EVALUATION_PASSAGES)
    compression_plan = CompressionPlan.from_json_file(plan) if plan is not None else None
    delivered, source = _dense_source(model, dense_model, plan is not None or recovery != Recovery.NONE)
    dense = load_model(source, trust_remote_code=trust_remote_code)
    setup = TimingSetup.for_model(dense.is_causal, threads)
    names = runtimes_for(runtime, dense.is_causal, log)
    retrieval = None if dense.is_causal else retrieval_reference(dense.model, dense.tokenizer, texts.corpus)  # once for all
    return [evaluate(dense, texts, compression_plan, recovery, name, latency=latency, setup=setup, distillation=distillation,
                     distill_texts=splits.calibration, delivered=delivered, retrieval=retrieval) for name in names]


def _dense_source(model: str | None, dense_model: str | None, compresses: bool) -> tuple[Path | None, str | None]:
    """(the delivered folder `model` is, if it is one; the dense model to load): a delivered
    folder is judged against `dense_model`, by default the model it was compressed from."""
    if model is not None and is_saved_model(Path(model)):
        if compresses:
            raise UserError(f"{model} is already compressed (and recovered); drop --plan and --recover, "
                            "or pass the dense model as --model")
        return Path(model), dense_model or saved_source(Path(model))
    if dense_model is not None:
        raise UserError("--dense is for a delivered --model folder (one with compression.json); drop it")
    return None, model


def evaluate(dense: LoadedModel, texts: TextSplits, plan: CompressionPlan | None = None, recovery: str = Recovery.NONE,
             runtime: str = "torch", latency: bool = True, setup: TimingSetup = TimingSetup(),
             distillation: DistillConfig = DistillConfig(), distill_texts: list[str] | None = None,
             delivered: Path | None = None, retrieval: RetrievalReference | None = None) -> EvaluationReport:
    """Metrics of the dense model, and of the compressed one when a plan is given (or a
    delivered folder, judged from the files it serves `runtime` from); the candidate
    (compressed, else dense) is exported for `runtime` and judged as it runs there. Quality
    is measured on texts.evaluation, retrieval over texts.corpus (`retrieval`: the dense
    model's, if already computed); least squares fits texts.calibration, distillation
    `distill_texts` (default the same), both choosing on texts.validation."""
    served_on, torch_runtime = get_runtime(runtime), get_runtime("torch")
    if dense.is_causal and no_generation(served_on):
        raise UserError(no_generation(served_on) + "; pass --runtime torch")
    candidate = dense
    if delivered is not None:
        candidate = load(delivered)
        plan = candidate.plan
    elif plan is not None:
        candidate = compress(dense, plan, recovery, texts.calibration, quantize=False, validation=texts.validation,
                             distillation=replace(distillation, int8_kind=served_on.int8_kind),
                             distill_texts=distill_texts, progress=True)
    if retrieval is None and not dense.is_causal:
        retrieval = retrieval_reference(dense.model, dense.tokenizer, texts.corpus)
    with tempfile.TemporaryDirectory(prefix="ppocompress-eval-") as workdir:
        reference_dir = torch_runtime.export(dense, Path(workdir) / "reference", [])
        artifact = (served(delivered, runtime) if delivered is not None
                    else served_on.export(candidate, Path(workdir) / "candidate", texts.calibration))
        session = served_on.session(artifact)
        judged = _fidelity(dense, candidate, session, texts.evaluation) | _retrieval(dense, session, retrieval)
        dense_metrics = _metrics(dense, torch_runtime.size_bytes(reference_dir), setup, **_lee(dense),
                                 **({} if retrieval is None else vars(retrieval.dense)))
        report = EvaluationReport(
            model=dense.source, delivered=None if delivered is None else str(delivered), model_type=dense.model_type,
            recovery=recovery if plan is not None and delivered is None else None, runtime=runtime, timing=setup,
            evaluation_texts=min(len(texts.evaluation), CAUSAL_HELD_OUT) if dense.is_causal else len(texts.evaluation),
            dense=dense_metrics if plan is not None else replace(dense_metrics, **judged),
            distillation=None if plan is None else candidate.distillation, plan=plan,
            compressed=None if plan is None else _metrics(candidate, served_on.size_bytes(artifact), setup, **judged))
        if latency:
            _add_latencies(report, measure_latencies([("reference", reference_dir, "torch"), ("candidate", artifact, runtime)],
                                                     setup))
    return report


def served(delivered: Path, runtime: str) -> Path:
    """The model a delivered folder serves `runtime` from, or a UserError naming what is missing."""
    path = served_artifact(delivered, runtime)
    if not path.exists():
        raise UserError(f"{delivered} holds no model for {runtime} ({path} is missing); "
                        "evaluate it on the runtime it was delivered for, or with --runtime torch")
    return get_runtime(runtime).check_artifact(path)


def _metrics(model: LoadedModel, size_bytes: int, setup: TimingSetup, **quality: float) -> ModelMetrics:
    return ModelMetrics(params=count_parameters(model.model), size_bytes=size_bytes,
                        flops_per_sequence=model_flops(model.model, setup.seq_len), **quality)


def _lee(model: LoadedModel) -> dict[str, float]:
    if model.is_causal:
        return {}
    return {f"lee_{k}": v for k, v in lee_correlation(model.model, model.tokenizer).items()}


def _fidelity(dense: LoadedModel, candidate: LoadedModel, session, texts: list[str]) -> dict[str, float]:
    """How the candidate, as its runtime runs it, compares with dense PyTorch fp32 (ModelMetrics' fields)."""
    if dense.is_causal:  # as the torch runtime serves it: causal LMs generate there
        reference = NextTokenReference(dense.model, dense.tokenizer, texts[:CAUSAL_HELD_OUT])
        compared = reference.compare(session.model)
        return {"perplexity_dense": reference.compare(dense.model).perplexity, "perplexity": compared.perplexity,
                "kl_to_dense": compared.kl, "top1_agreement": compared.top1_agreement}
    reference = embed(dense.model, dense.tokenizer, texts, max_length=HELD_OUT_MAX_LENGTH)
    return judge_session(session, dense.model, dense.tokenizer, texts, reference)


def _retrieval(dense: LoadedModel, session, reference: RetrievalReference | None) -> dict:
    """The retrieval of the model a session runs, as ModelMetrics' fields (none for a causal LM)."""
    return {} if reference is None else vars(judge_retrieval(session, dense.model, dense.tokenizer, reference))


def _add_latencies(report: EvaluationReport, measured: dict[str, LatencyResult]) -> None:
    """The latencies of dense PyTorch fp32 ("reference") and of the judged model ("candidate"),
    timed side by side; when a causal LM generates, its tokens/s too, which is what users compare."""
    reference, candidate = measured["reference"], measured["candidate"]
    report.dense.latency_torch_fp32_ms = reference.ms
    report.judged.latency_ms, report.judged.speedup = candidate.ms, reference.ms / candidate.ms
    if report.timing.generates:
        if report.compressed is not None:
            report.dense.decode_tokens_per_s_torch_fp32, report.dense.prefill_tokens_per_s_torch_fp32 = (
                reference.tokens_per_s(report.timing))
        report.judged.decode_tokens_per_s, report.judged.prefill_tokens_per_s = candidate.tokens_per_s(report.timing)
