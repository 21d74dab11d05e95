"""Plan in, compressed model out: prune, recover, then quantize."""

from __future__ import annotations

from pathlib import Path

from ppocompress.compress.apply import apply_plan, quantize_planned_layers
from ppocompress.compress.distillation import DistillConfig, distill
from ppocompress.compress.models import LoadedModel
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.recovery import check_method, refit_projections


def compress(dense: LoadedModel, plan: CompressionPlan, recovery: str = "none", calibration: list[str] | None = None,
             quantize: bool = True, validation: list[str] | None = None, distillation: DistillConfig = DistillConfig(),
             distill_texts: list[str] | None = None, checkpoint: Path | None = None, progress: bool = False) -> LoadedModel:
    """Applies plan to dense, recovers with `recovery` (none, lsq, distill or lsq+distill),
    then quantizes the int8-marked layers (recovery works on fp32 weights). Least squares
    fits `calibration`, distillation `distill_texts` (default: calibration); both make
    their choices on `validation`. quantize=False stops before int8, e.g. for a runtime's
    export, which quantizes on its own side. A distillation's report is kept on the
    result (.distillation); `checkpoint` is its resumable folder."""
    check_method(recovery)
    compressed = apply_plan(dense, plan, quantize=False)
    if recovery in ("lsq", "lsq+distill"):
        refit_projections(dense, compressed, calibration or [], validation)
    if recovery in ("distill", "lsq+distill"):
        compressed.distillation = distill(dense, compressed, distill_texts or calibration or [], validation or [], distillation,
                                          checkpoint, progress)
    if quantize:
        quantize_planned_layers(compressed.model, plan)
    return compressed
