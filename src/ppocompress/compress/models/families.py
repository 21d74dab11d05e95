"""One registry entry per supported model family: its layer adapter, whether it is a
causal LM, and how an exported graph names its layers (the per-layer int8 choice of ONNX
Runtime and OpenVINO finds a layer's nodes by that name)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ppocompress.compress.models.architecture import (
    TABLE_SEQ_LEN,
    BertAdapter,
    FamilyAdapter,
    GPT2Adapter,
    LayerInfo,
    LlamaAdapter,
    MPNetAdapter,
)
from ppocompress.errors import UserError


@dataclass(frozen=True)
class Family:
    adapter: FamilyAdapter
    causal: bool
    # The exporter names nodes after module paths, e.g. "/model/encoder/layer.3/attention/...";
    # this is the part before the layer index (the first "model" is the export wrapper's).
    graph_layer_prefix: str
    # The exporter hands a model a ready-made 4-D additive mask, because transformers' mask
    # builders read lengths as Python numbers, which tracing breaks. MPNet refuses a 4-D
    # mask, and its own builder (a broadcast of the 2-D mask) traces: it is handed the 2-D one.
    takes_4d_mask: bool = True

    def graph_layer_pattern(self, index: int | None = None) -> re.Pattern:
        """Matches the node names of layer `index` in an exported graph (any layer when None;
        group 1 is then the index)."""
        number = r"(\d+)" if index is None else str(index)
        return re.compile(re.escape(self.graph_layer_prefix) + number + "/")


_BERT = Family(BertAdapter(), causal=False, graph_layer_prefix="/encoder/layer.")
_LLAMA = Family(LlamaAdapter(), causal=True, graph_layer_prefix="/model/layers.")

FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    "roberta": _BERT,
    "mpnet": Family(MPNetAdapter(), causal=False, graph_layer_prefix="/encoder/layer.", takes_4d_mask=False),
    "gpt2": Family(GPT2Adapter(), causal=True, graph_layer_prefix="/transformer/h."),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
}


def family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise UserError(f"unsupported architecture {model_type!r}; supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def family_of(model: nn.Module) -> Family:
    """The family of a loaded model, by its config's model_type."""
    return family(getattr(model.config, "model_type", "?"))


def adapter_for(model: nn.Module) -> FamilyAdapter:
    return family_of(model).adapter


def layer_table(model: nn.Module, seq_len: int = TABLE_SEQ_LEN) -> list[LayerInfo]:
    """Per layer: heads, KV groups, head dim, FFN width, parameters, FLOPs per token."""
    return adapter_for(model).layer_table(model, seq_len)
