"""A compression plan: for every layer of the original model, what is kept.

Plans are plain data (JSON round-trip) so a search can produce them, a user can edit
them, and a saved model can be rebuilt from one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from ppocompress.compress.models.architecture import LayerInfo
from ppocompress.errors import UserError
from ppocompress.fileio import read_json_object


class Precision(str, Enum):
    """How a layer's weights are stored and served."""

    FLOAT = "float"  # the runtime's floating point: fp32 on PyTorch and ONNX Runtime, bf16 or fp16 on OpenVINO
    INT8 = "int8"  # 8 bits, a scale per output channel (see ops/quantize.py)
    INT4 = "int4"  # 4 bits, asymmetric, a scale and zero point per group of inputs; OpenVINO only


@dataclass
class LayerPlan:
    """What happens to one layer. None means "keep all" for groups and neurons."""

    keep_groups: list[int] | None = None  # attention groups (KV heads; = heads without GQA)
    keep_neurons: list[int] | None = None  # FFN neurons
    drop: bool = False  # remove the whole layer
    weights: Precision = Precision.FLOAT  # of the layer's Linear layers
    sparsity: float = 0.0  # unstructured magnitude sparsity; saves size only, no CPU speed


@dataclass
class CompressionPlan:
    layers: list[LayerPlan] = field(default_factory=list)
    # A causal LM's output head (and, where it is tied to it, the input embedding): every
    # generated token reads it, and in a small LM it is a large share of the weights.
    head: Precision = Precision.FLOAT

    @classmethod
    def dense(cls, num_layers: int) -> "CompressionPlan":
        return cls([LayerPlan() for _ in range(num_layers)])

    def kept_layers(self) -> list[LayerPlan]:
        """The plans of the layers that stay, in order: a compressed model's layers."""
        return [layer for layer in self.layers if not layer.drop]

    def kept_indices(self) -> list[int]:
        """The dense model's indices of the layers that stay, in order."""
        return [i for i, layer in enumerate(self.layers) if not layer.drop]

    def int8_layers(self) -> list[int]:
        """Indices, among the kept layers, of the layers marked int8."""
        return self.layers_in(Precision.INT8)

    def layers_in(self, precision: Precision) -> list[int]:
        """Indices, among the kept layers, of the layers whose weights are in `precision`."""
        return [i for i, layer in enumerate(self.kept_layers()) if layer.weights == precision]

    def uses(self, precision: Precision) -> bool:
        """Whether any kept layer or the head is in `precision`."""
        return bool(self.layers_in(precision)) or self.head == precision

    def validate(self, table: list[LayerInfo], causal: bool) -> None:
        """Raise UserError unless this plan fits a model with this layer table."""
        if self.head != Precision.FLOAT and not causal:
            raise UserError("head is for causal language models (their output head); set it to \"float\"")
        if len(self.layers) != len(table):
            raise UserError(f"the plan has {len(self.layers)} layers but the model has {len(table)}; "
                            "make the plan for this model")
        if all(layer.drop for layer in self.layers):
            raise UserError("the plan drops every layer; keep at least one")
        for info, layer in zip(table, self.layers):
            where = f"plan layer {info.index}"
            for name, kept, total in (("keep_groups", layer.keep_groups, info.kv_heads),
                                      ("keep_neurons", layer.keep_neurons, info.ffn)):
                if kept is None:
                    continue
                if not kept:
                    raise UserError(f"{where}: {name} is empty; keep at least one, or set drop=true")
                if len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= total:
                    raise UserError(f"{where}: {name} must be distinct indices in [0, {total}), got {kept}")
            if not 0.0 <= layer.sparsity < 1.0:
                raise UserError(f"{where}: sparsity must be in [0, 1), got {layer.sparsity}")

    def to_dict(self) -> dict:
        layers = [{**asdict(layer), "weights": layer.weights.value} for layer in self.layers]
        return {"layers": layers, "head": self.head.value}

    @classmethod
    def from_dict(cls, data: dict) -> "CompressionPlan":
        try:
            layers = [LayerPlan(**_layer_fields(layer)) for layer in data["layers"]]
            return cls(layers, head=_precision(data.get("head"), data.get("int8_head")))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"not a compression plan ({exc}); expected {{\"layers\": [{{\"keep_groups\": ..., ...}}]}}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "CompressionPlan":
        data = read_json_object(path, "plan file", 'a plan is {"layers": [...]}, as ppocompress writes it')
        if "plan" in data:  # a result.json or compression.json holds one
            data = data["plan"]
        return cls.from_dict(data)


def _layer_fields(layer: dict) -> dict:
    """A layer's fields, its precision parsed; plans written before precisions had an
    int8 flag instead, read as int8 or float."""
    fields = dict(layer)
    fields["weights"] = _precision(fields.get("weights"), fields.pop("int8", None))
    return fields


def _precision(value: str | None, int8_flag: bool | None) -> Precision:
    if value is None:
        return Precision.INT8 if int8_flag else Precision.FLOAT
    try:
        return Precision(value)
    except ValueError:
        raise ValueError(f"unknown precision {value!r}, use one of {', '.join(p.value for p in Precision)}") from None
