"""Plan in, compressed model out: prune, recover, then quantize."""

from __future__ import annotations

from pathlib import Path

from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.ops.apply import apply_plan, quantize_planned_layers
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.recovery.distillation import DistillConfig, distill
from ppocompress.compress.recovery.lsq import refit_on_dense_inputs, refit_projections
from ppocompress.compress.recovery.method import Recovery


def compress(dense: LoadedModel, plan: CompressionPlan, recovery: Recovery | str = Recovery.NONE,
             calibration: list[str] | None = None, quantize: bool = True, validation: list[str] | None = None,
             distillation: DistillConfig = DistillConfig(), distill_texts: list[str] | None = None,
             checkpoint: Path | None = None, progress: bool = False) -> LoadedModel:
    """Applies plan to dense, recovers with `recovery` (none, lsq, distill or lsq+distill),
    then quantizes the int8-marked layers (recovery works on fp32 weights). Least squares
    fits `calibration` (an encoder's choosing its ridges on `validation`; a causal LM's on
    the dense model's inputs, see lsq.py), distillation `distill_texts` (default:
    calibration), choosing on `validation`. quantize=False stops before int8, e.g. for a runtime's
    export, which quantizes on its own side. A distillation's report is kept on the
    result (.distillation); `checkpoint` is its resumable folder."""
    recovery = Recovery.parse(recovery)
    compressed = apply_plan(dense, plan, quantize=False)
    if recovery.refits:  # a causal LM on the dense inputs, as lsq.py explains
        if dense.is_causal:
            refit_on_dense_inputs(dense, compressed, calibration or [])
        else:
            refit_projections(dense, compressed, calibration or [], validation)
    if recovery.distills:
        compressed.distillation = distill(dense, compressed, distill_texts or calibration or [], validation or [], distillation,
                                          checkpoint, progress)
    if quantize:
        quantize_planned_layers(compressed.model, plan)
    return compressed
