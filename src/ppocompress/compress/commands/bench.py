"""`ppocompress bench`: compression variants x runtimes, each judged and timed side by side.

A variant applies one level to every layer (or a given plan), choosing *which* heads,
neurons and layers by activation-aware importance on calibration text; pruned variants are
recovered by least squares. Each variant is exported for every runtime asked for (int8 as
that runtime computes it), its quality measured on the held-out split as the runtime runs
it, and every model timed in its own process, interleaved with dense PyTorch fp32 in the
same rounds, so the speedups are ratios of side-by-side measurements. A causal LM is
judged on next-token distributions and timed decoding (see TimingSetup.for_model), on the
runtimes that generate with a KV cache.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ppocompress.compress.commands.runtime_choice import check_runtime, runtimes_for
from ppocompress.compress.data.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES, TextSplits, load_splits, subset
from ppocompress.compress.measure.cost import count_parameters
from ppocompress.compress.measure.quality import HeldOut, HeldOutQuality
from ppocompress.compress.measure.timing import DEFAULT_THREADS, TimingSetup, check_threads, measure_latencies
from ppocompress.compress.models.families import layer_table
from ppocompress.compress.models.loading import LoadedModel, load_model
from ppocompress.compress.ops.importance import (
    importance_scores,
    layers_to_drop,
    plan_from_scores,
)
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import CompressionPlan, Precision
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import get_runtime
from ppocompress.fileio import atomic_write_text


@dataclass
class Variant:
    name: str
    group_keep: float = 1.0  # fraction of attention groups kept in every layer
    neuron_keep: float = 1.0  # fraction of FFN neurons kept in every layer
    drop: int = 0  # whole layers removed (least block influence first)
    weights: Precision = Precision.FLOAT  # of every kept layer
    head: Precision | None = None  # a causal LM's output head; None: as the layers
    plan: CompressionPlan | None = None  # a given plan instead of the uniform fields

    def plan_for(self, dense: LoadedModel, scores) -> CompressionPlan:
        if self.plan is not None:
            return self.plan
        table = layer_table(dense.model)
        n = len(table)
        dropped = set(layers_to_drop(scores, self.drop)) if self.drop else set()
        plan = plan_from_scores(table, scores, [self.group_keep] * n, [self.neuron_keep] * n, weights=[self.weights] * n,
                                drop=[j in dropped for j in range(n)])
        return replace(plan, head=(self.head or self.weights) if dense.is_causal else Precision.FLOAT)


VARIANTS = [
    Variant("dense"),
    Variant("int8", weights=Precision.INT8),
    Variant("heads -25%", group_keep=0.75),
    Variant("heads -50%", group_keep=0.5),
    Variant("ffn -25%", neuron_keep=0.75),
    Variant("ffn -50%", neuron_keep=0.5),
    Variant("drop 1 layer", drop=1),
    Variant("drop 2 layers", drop=2),
    Variant("heads -50% ffn -50%", group_keep=0.5, neuron_keep=0.5),
    Variant("ffn -50% int8", neuron_keep=0.5, weights=Precision.INT8),
    Variant("heads -50% ffn -50% int8", group_keep=0.5, neuron_keep=0.5, weights=Precision.INT8),
    Variant("drop 2 layers int8", drop=2, weights=Precision.INT8),
]


# Decoders: int8 or int4 weights (int4 on OpenVINO only), whole KV groups of few (SmolLM2 has 3), layers.
CAUSAL_VARIANTS = [
    Variant("dense"),
    Variant("int8", weights=Precision.INT8),
    Variant("int4", weights=Precision.INT4, head=Precision.INT8),  # head in int8, as NNCF's int4 default keeps it
    Variant("KV groups -1/3", group_keep=2 / 3),
    Variant("ffn -25%", neuron_keep=0.75),
    Variant("ffn -50%", neuron_keep=0.5),
    Variant("drop 2 layers", drop=2),
    Variant("ffn -25% int8", neuron_keep=0.75, weights=Precision.INT8),
    Variant("drop 2 layers int8", drop=2, weights=Precision.INT8),
    Variant("drop 4 layers int8", drop=4, weights=Precision.INT8),
]


def default_variants(causal: bool) -> list[Variant]:
    return CAUSAL_VARIANTS if causal else VARIANTS


@dataclass
class VariantResult(HeldOutQuality):
    name: str
    runtime: str
    params: int
    size_bytes: int
    latency_ms: float = float("nan")
    latency_median_ms: float = float("nan")
    speedup: float = float("nan")  # against dense PyTorch fp32, same rounds; of decoding for a causal LM
    prefill_speedup: float | None = None  # causal LMs

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchRun:
    """A bench run: the dense model, the timing every variant shared, each variant on each runtime."""

    model: str
    causal: bool
    timing: TimingSetup
    variants: list[VariantResult]

    def to_dict(self) -> dict:
        """What --json writes."""
        return {"model": self.model, "timing": self.timing.to_dict(), "variants": [r.to_dict() for r in self.variants]}


def bench_command(model: str | None = None, text: Path | None = None, runtime: str = "auto", threads: int = DEFAULT_THREADS,
                  batch_size: int = TimingSetup.batch_size, seq_len: int = TimingSetup.seq_len, rounds: int = TimingSetup.rounds,
                  calibration_texts: int | None = None, evaluation_texts: int | None = None, trust_remote_code: bool = False,
                  json_file: Path | None = None, log: Callable[[str], None] = print,
                  progress: Callable[[str], None] = print) -> BenchRun:
    """`ppocompress bench`: the default variants of the model's kind on each runtime --runtime
    names (auto: each available one, those skipped named to `log`), their progress told to
    `progress`; with `json_file`, the run is written there too. Every option is checked
    before the model loads. A causal LM is timed decoding, whatever batch_size says."""
    setup = TimingSetup(batch_size=batch_size, seq_len=seq_len, threads=threads, rounds=rounds)
    check_threads(threads)
    check_runtime(runtime)
    texts = subset(load_splits(text), calibration_texts or CALIBRATION_PASSAGES, evaluation_texts or EVALUATION_PASSAGES)
    dense = load_model(model, trust_remote_code=trust_remote_code)
    names = runtimes_for(runtime, dense.is_causal, log)
    if dense.is_causal:
        setup = replace(TimingSetup.for_model(True, threads), rounds=rounds)
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)  # one that cannot be made fails before the long run
    run = BenchRun(dense.source, dense.is_causal, setup, run_bench(dense, texts, names, setup=setup, log=progress))
    if json_file is not None:
        atomic_write_text(json_file, json.dumps(run.to_dict(), indent=1))
    return run


def run_bench(dense: LoadedModel, texts: TextSplits, runtimes: list[str], variants: list[Variant] | None = None,
              recovery: str = Recovery.LSQ, setup: TimingSetup = TimingSetup(), log=print) -> list[VariantResult]:
    """variants: default_variants for the model's kind when None."""
    variants = default_variants(dense.is_causal) if variants is None else variants
    log(f"importance scores on {len(texts.calibration)} calibration passages")
    scores = importance_scores(dense, texts.calibration)
    held_out = HeldOut(dense, texts.evaluation)
    results: list[VariantResult] = []
    with tempfile.TemporaryDirectory(prefix="ppocompress-bench-") as workdir:
        work = Path(workdir)
        targets = [("dense torch fp32 (reference)", get_runtime("torch").export(dense, work / "reference", []), "torch")]
        for i, variant in enumerate(variants):
            plan = variant.plan_for(dense, scores)
            prunes = any(p.keep_groups is not None or p.keep_neurons is not None or p.drop for p in plan.layers)
            fp32 = compress(dense, plan, recovery if prunes else Recovery.NONE, texts.calibration, quantize=False,
                            validation=texts.validation)
            for name in runtimes:
                runtime = get_runtime(name)
                if plan.uses(Precision.INT4) and not runtime.serves_int4:
                    log(f"[{i + 1}/{len(variants)}] {variant.name}: not on {name}, which does not serve int4 weights")
                    continue
                log(f"[{i + 1}/{len(variants)}] {variant.name} on {name}")
                artifact = runtime.export(fp32, work / f"variant{i}-{name}", texts.calibration)
                quality = held_out.judge(runtime.session(artifact))
                results.append(VariantResult(name=variant.name, runtime=name, params=count_parameters(fp32.model),
                                             size_bytes=runtime.size_bytes(artifact), **vars(quality)))
                targets.append((f"{variant.name} on {name}", artifact, name))
        shape = (f"{setup.new_tokens} tokens decoded after a {setup.seq_len}-token prompt" if setup.generates
                 else f"batch {setup.batch_size} x {setup.seq_len}")
        log(f"latency: {len(targets)} models x {setup.rounds} interleaved rounds, {shape}, {setup.threads} threads")
        latencies = measure_latencies(targets, setup)
    reference = latencies[targets[0][0]]
    for result in results:
        measured = latencies[f"{result.name} on {result.runtime}"]
        result.latency_ms, result.latency_median_ms, result.speedup = measured.ms, measured.median_ms, reference.ms / measured.ms
        if setup.generates:
            result.prefill_speedup = reference.prefill_ms / measured.prefill_ms
    return results
