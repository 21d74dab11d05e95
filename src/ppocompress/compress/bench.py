"""`ppocompress bench`: compression variants x runtimes, each judged and timed side by side.

A variant applies one level to every layer (or a given plan), choosing *which* heads,
neurons and layers by activation-aware importance on calibration text; pruned variants are
recovered by least squares. Each variant is exported for every runtime asked for (int8 as
that runtime computes it), its quality measured on the held-out split as the runtime runs
it, and every model timed in its own process, interleaved with dense PyTorch fp32 in the
same rounds, so the speedups are ratios of side-by-side measurements.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ppocompress.compress.architecture import layer_table
from ppocompress.compress.cost import count_parameters
from ppocompress.compress.importance import (
    importance_scores,
    layers_to_drop,
    plan_from_scores,
)
from ppocompress.compress.models import LoadedModel
from ppocompress.compress.pipeline import compress
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.quality import HELD_OUT_MAX_LENGTH, embed, judge_session
from ppocompress.compress.runtimes import get_runtime
from ppocompress.compress.text import TextSplits
from ppocompress.compress.timing import TimingSetup, measure_latencies


@dataclass
class Variant:
    name: str
    group_keep: float = 1.0  # fraction of attention groups kept in every layer
    neuron_keep: float = 1.0  # fraction of FFN neurons kept in every layer
    drop: int = 0  # whole layers removed (least block influence first)
    int8: bool = False
    plan: CompressionPlan | None = None  # a given plan instead of the uniform fields

    def plan_for(self, dense: LoadedModel, scores) -> CompressionPlan:
        if self.plan is not None:
            return self.plan
        table = layer_table(dense.model)
        n = len(table)
        dropped = set(layers_to_drop(scores, self.drop)) if self.drop else set()
        return plan_from_scores(table, scores, [self.group_keep] * n, [self.neuron_keep] * n, int8=[self.int8] * n,
                                drop=[j in dropped for j in range(n)])


VARIANTS = [
    Variant("dense"),
    Variant("int8", int8=True),
    Variant("heads -25%", group_keep=0.75),
    Variant("heads -50%", group_keep=0.5),
    Variant("ffn -25%", neuron_keep=0.75),
    Variant("ffn -50%", neuron_keep=0.5),
    Variant("drop 1 layer", drop=1),
    Variant("drop 2 layers", drop=2),
    Variant("heads -50% ffn -50%", group_keep=0.5, neuron_keep=0.5),
    Variant("ffn -50% int8", neuron_keep=0.5, int8=True),
    Variant("heads -50% ffn -50% int8", group_keep=0.5, neuron_keep=0.5, int8=True),
    Variant("drop 2 layers int8", drop=2, int8=True),
]


@dataclass
class VariantResult:
    name: str
    runtime: str
    params: int
    size_bytes: int
    cosine: float  # mean cosine to dense PyTorch fp32 on held-out text, as the runtime runs it
    cosine_min: float
    lee_pearson: float
    latency_ms: float = float("nan")
    latency_median_ms: float = float("nan")
    speedup: float = float("nan")  # against dense PyTorch fp32, same rounds

    def to_dict(self) -> dict:
        return asdict(self)


def run_bench(dense: LoadedModel, texts: TextSplits, runtimes: list[str], variants: list[Variant] = VARIANTS,
              recovery: str = "lsq", setup: TimingSetup = TimingSetup(), log=print) -> list[VariantResult]:
    log(f"importance scores on {len(texts.calibration)} calibration passages")
    scores = importance_scores(dense, texts.calibration)
    reference = embed(dense.model, dense.tokenizer, texts.evaluation, max_length=HELD_OUT_MAX_LENGTH)
    results: list[VariantResult] = []
    with tempfile.TemporaryDirectory(prefix="ppocompress-bench-") as workdir:
        work = Path(workdir)
        targets = [("dense torch fp32 (reference)", get_runtime("torch").export(dense, work / "reference", []), "torch")]
        for i, variant in enumerate(variants):
            plan = variant.plan_for(dense, scores)
            prunes = any(p.keep_groups is not None or p.keep_neurons is not None or p.drop for p in plan.layers)
            fp32 = compress(dense, plan, recovery if prunes else "none", texts.calibration, quantize=False)
            for name in runtimes:
                runtime = get_runtime(name)
                log(f"[{i + 1}/{len(variants)}] {variant.name} on {name}")
                artifact = runtime.export(fp32, work / f"variant{i}-{name}", texts.calibration)
                quality = judge_session(runtime.session(artifact), dense.model, dense.tokenizer, texts.evaluation, reference)
                results.append(VariantResult(variant.name, name, count_parameters(fp32.model), runtime.size_bytes(artifact),
                                             quality["mean_cosine"], quality["min_cosine"], quality["lee_pearson"]))
                targets.append((f"{variant.name} on {name}", artifact, name))
        log(f"latency: {len(targets)} models x {setup.rounds} interleaved rounds, batch {setup.batch_size} x {setup.seq_len}, "
            f"{setup.threads} threads")
        latencies = measure_latencies(targets, setup)
    reference_ms = latencies[targets[0][0]].ms
    for result in results:
        measured = latencies[f"{result.name} on {result.runtime}"]
        result.latency_ms, result.latency_median_ms, result.speedup = measured.ms, measured.median_ms, reference_ms / measured.ms
    return results


