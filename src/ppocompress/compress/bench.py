"""`ppocompress bench`: a table of uniform compression variants, each measured.

Every variant applies the same level to every layer, choosing *which* heads, neurons and
layers by activation-aware importance on calibration text. Quality is measured on the
held-out evaluation split (never used for calibration), with and without least-squares
recovery; latency is measured for every variant in its own process, interleaved with the
dense model in the same run, so the speedups are ratios of side-by-side measurements.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ppocompress.compress.architecture import layer_table
from ppocompress.compress.cost import count_parameters, directory_bytes, measure_latencies
from ppocompress.compress.export import save
from ppocompress.compress.importance import importance_scores, layers_to_drop, plan_from_scores
from ppocompress.compress.models import LoadedModel
from ppocompress.compress.onnx_export import export_onnx, quantize_onnx_int8
from ppocompress.compress.pipeline import compress
from ppocompress.compress.quality import embed, embed_onnx, embedding_fidelity, lee_correlation
from ppocompress.compress.text import TextSplits


@dataclass
class Variant:
    name: str
    heads_keep: float = 1.0  # fraction of attention groups kept in every layer
    ffn_keep: float = 1.0  # fraction of FFN neurons kept in every layer
    drop: int = 0  # whole layers removed (least block influence first)
    int8: bool = False
    backend: str = "torch"  # "torch" or "onnxruntime"

    @property
    def prunes(self) -> bool:
        return self.heads_keep < 1 or self.ffn_keep < 1 or self.drop > 0


VARIANTS = [
    Variant("dense"),
    Variant("dense onnxruntime fp32", backend="onnxruntime"),
    Variant("int8", int8=True),
    Variant("int8 onnxruntime", int8=True, backend="onnxruntime"),
    Variant("heads -25%", heads_keep=0.75),
    Variant("heads -50%", heads_keep=0.5),
    Variant("ffn -25%", ffn_keep=0.75),
    Variant("ffn -50%", ffn_keep=0.5),
    Variant("drop 1 layer", drop=1),
    Variant("drop 2 layers", drop=2),
    Variant("heads -50% ffn -50%", heads_keep=0.5, ffn_keep=0.5),
    Variant("ffn -50% int8", ffn_keep=0.5, int8=True),
    Variant("heads -50% ffn -50% int8", heads_keep=0.5, ffn_keep=0.5, int8=True),
    Variant("drop 2 layers int8", drop=2, int8=True),
]


@dataclass
class VariantResult:
    name: str
    backend: str
    params: int
    size_bytes: int
    latency_ms: float = float("nan")
    speedup: float = float("nan")
    quality: dict[str, dict[str, float]] = field(default_factory=dict)  # recovery -> metrics

    def to_dict(self) -> dict:
        return asdict(self)


def run_bench(dense: LoadedModel, texts: TextSplits, variants: list[Variant] = VARIANTS, recoveries=("none", "lsq"),
              batch_size: int = 32, seq_len: int = 64, threads: int = 2, rounds: int = 3, log=print) -> list[VariantResult]:
    table = layer_table(dense.model)
    num_layers = len(table)
    log(f"importance scores on {len(texts.calibration)} calibration passages")
    scores = importance_scores(dense, texts.calibration)
    reference = embed(dense.model, dense.tokenizer, texts.evaluation)
    results: list[VariantResult] = []
    targets = []
    with tempfile.TemporaryDirectory(prefix="ppocompress-bench-") as workdir:
        work = Path(workdir)
        onnx_dense = None
        for i, variant in enumerate(variants):
            log(f"[{i + 1}/{len(variants)}] {variant.name}")
            dropped = set(layers_to_drop(scores, variant.drop)) if variant.drop else set()
            plan = plan_from_scores(table, scores, [variant.heads_keep] * num_layers, [variant.ffn_keep] * num_layers,
                                    int8=[variant.int8 and variant.backend == "torch"] * num_layers,
                                    drop=[j in dropped for j in range(num_layers)])
            if variant.backend == "onnxruntime":
                if onnx_dense is None:
                    onnx_dense = export_onnx(dense.model, dense.tokenizer, work / "dense.onnx")
                path = onnx_dense if not variant.int8 else quantize_onnx_int8(onnx_dense, work / "int8.onnx", model_type=dense.model_type)
                quality = {"none": _metrics(reference, embed_onnx(path, dense.tokenizer, texts.evaluation), None)}
                results.append(VariantResult(variant.name, variant.backend, count_parameters(dense.model), directory_bytes(path), quality=quality))
                targets.append((variant.name, path, "onnxruntime"))
                continue
            quality = {}
            compressed = None
            for recovery in recoveries if variant.prunes else ("none",):
                compressed = compress(dense, plan, recovery, texts.calibration)
                quality[recovery] = _metrics(reference, embed(compressed.model, compressed.tokenizer, texts.evaluation), compressed)
            directory = save(compressed, work / f"variant{i}")
            results.append(VariantResult(variant.name, variant.backend, count_parameters(compressed.model),
                                         directory_bytes(directory / "model.safetensors"), quality=quality))
            targets.append((variant.name, directory, "torch"))
        log(f"latency: {len(targets)} targets x {rounds} interleaved rounds, batch {batch_size}, seq {seq_len}, {threads} threads")
        latencies = measure_latencies(targets, rounds=rounds, batch_size=batch_size, seq_len=seq_len, threads=threads)
    dense_ms = latencies["dense"].median_ms
    for result in results:
        result.latency_ms = latencies[result.name].median_ms
        result.speedup = dense_ms / result.latency_ms
    return results


def _metrics(reference: torch.Tensor, candidate: torch.Tensor, model: LoadedModel | None) -> dict[str, float]:
    metrics = embedding_fidelity(reference, candidate)
    if model is not None:
        metrics.update({f"lee_{k}": v for k, v in lee_correlation(model.model, model.tokenizer).items()})
    return metrics


