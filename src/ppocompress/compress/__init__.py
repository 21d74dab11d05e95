"""Compression engine: physically smaller transformers, and measurements of what it cost.

Knows nothing of reinforcement learning; the search (ppocompress.search) drives it.
The names below load on first use, so that a latency worker, which imports one runtime
module of this package, does not pay for torch and transformers. For the same reason
runtimes/*, measure/timing.py and measure/latency_worker.py import torch, transformers
and the modules that need them only inside the functions that use them.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "EMBEDDED_DEFAULT": "models.loading", "LoadedModel": "models.loading", "load_model": "models.loading",
    "CompressionPlan": "plan", "LayerPlan": "plan", "Precision": "plan",
    "LayerInfo": "models.architecture", "adapter_for": "models.families", "layer_table": "models.families",
    "apply_plan": "ops.apply", "load": "files.saved", "save": "files.saved", "compress": "pipeline",
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
