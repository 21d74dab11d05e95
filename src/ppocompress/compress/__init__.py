"""Compression engine: physically smaller transformers, and measurements of what it cost.

Knows nothing of reinforcement learning; the search (ppocompress.search) drives it.
"""

from ppocompress.compress.apply import apply_plan
from ppocompress.compress.architecture import LayerInfo, adapter_for, layer_table
from ppocompress.compress.export import load, save
from ppocompress.compress.models import EMBEDDED_DEFAULT, LoadedModel, load_model
from ppocompress.compress.plan import CompressionPlan, LayerPlan

__all__ = [
    "EMBEDDED_DEFAULT",
    "CompressionPlan",
    "LayerInfo",
    "LayerPlan",
    "LoadedModel",
    "adapter_for",
    "apply_plan",
    "layer_table",
    "load",
    "load_model",
    "save",
]
