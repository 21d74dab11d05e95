"""Plan in, compressed model out: prune, recover, then quantize."""

from __future__ import annotations

from ppocompress.compress.apply import apply_plan, quantize_planned_layers
from ppocompress.compress.models import LoadedModel
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.recovery import METHODS, distill, refit_projections
from ppocompress.errors import UserError


def compress(dense: LoadedModel, plan: CompressionPlan, recovery: str = "none", calibration: list[str] | None = None,
             distill_steps: int = 200, progress: bool = False, quantize: bool = True) -> LoadedModel:
    """Applies plan to dense, recovers with `recovery` on calibration text, then quantizes
    the int8-marked layers (recovery works on fp32 weights). quantize=False stops before
    that, e.g. for ONNX export, which quantizes on its own side."""
    if recovery not in METHODS:
        raise UserError(f"unknown recovery {recovery!r}; use one of {', '.join(METHODS)}")
    compressed = apply_plan(dense, plan, quantize=False)
    if recovery == "lsq":
        refit_projections(dense, compressed, calibration or [])
    elif recovery == "distill":
        refit_projections(dense, compressed, calibration or [])  # a good start makes a short distillation enough
        distill(dense, compressed, calibration or [], steps=distill_steps, progress=progress)
    if quantize:
        quantize_planned_layers(compressed.model, plan)
    return compressed
