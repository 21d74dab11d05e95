"""Carrying out a plan: every removal is physical (smaller matrices), never a mask."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ppocompress.compress.models.architecture import FamilyAdapter
from ppocompress.compress.models.families import adapter_for, family_of, layer_table
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.ops.quantize import torch_int8_
from ppocompress.compress.plan import CompressionPlan, LayerPlan, Precision
from ppocompress.errors import UserError


def apply_plan(loaded: LoadedModel, plan: CompressionPlan, quantize: bool = True) -> LoadedModel:
    """A compressed copy of a dense model; `loaded` is left untouched.

    quantize=False keeps int8-marked layers in fp32 (ONNX export quantizes on its own side).
    """
    if loaded.plan is not None:
        raise UserError("this model is already compressed; apply plans to the dense model")
    plan.validate(layer_table(loaded.model), loaded.is_causal)
    model = copy.deepcopy(loaded.model)
    restructure(model, plan, quantize=quantize)
    return LoadedModel(model, loaded.tokenizer, loaded.model_type, loaded.source, dict(loaded.base_config), plan)


Refit = Callable[[str, nn.Module, torch.Tensor], None]  # (kind "attn" or "ffn", pruned projection, kept input columns)


def compress_layer(layer: nn.Module, plan: LayerPlan, adapter: FamilyAdapter, head_dim: int, refit: Refit | None = None,
                   quantize: Callable[[nn.Module, Precision], object] | None = None) -> nn.Module:
    """Applies one layer's plan in place and returns the layer: attention groups and FFN
    neurons removed, each pruned output projection refit (recovery), sparsity, then its
    weights through `quantize(layer, precision)` when the plan gives them a precision. The
    one path both the search's layer database and a delivered model go through (dropping
    is the model's business, not the layer's)."""
    inputs = kept_inputs(layer, plan, adapter, head_dim)
    if plan.keep_groups is not None:
        adapter.prune_attention(layer, sorted(plan.keep_groups), head_dim)
        if refit is not None:
            refit("attn", adapter.attention_output(layer), inputs["attn"])
    if plan.keep_neurons is not None:
        adapter.prune_ffn(layer, sorted(plan.keep_neurons))
        if refit is not None:
            refit("ffn", adapter.ffn_output(layer), inputs["ffn"])
    if plan.sparsity > 0:
        for module in adapter.attention_modules(layer) + adapter.ffn_modules(layer):
            magnitude_sparsify_(module.weight, plan.sparsity)
    if plan.weights != Precision.FLOAT and quantize is not None:
        quantize(conv1d_to_linear_(layer), plan.weights)
    return layer


def kept_inputs(layer: nn.Module, plan: LayerPlan, adapter: FamilyAdapter, head_dim: int) -> dict[str, torch.Tensor]:
    """The input columns of the unpruned `layer`'s output projections that `plan` keeps,
    keyed "attn" and "ffn" for the ones it prunes."""
    kept = {}
    if plan.keep_groups is not None:
        kept["attn"] = adapter.attention_output_columns(layer, sorted(plan.keep_groups), head_dim)
    if plan.keep_neurons is not None:
        kept["ffn"] = torch.tensor(sorted(plan.keep_neurons))
    return kept


def restructure(model: nn.Module, plan: CompressionPlan, quantize: bool = True) -> None:
    """Applies plan to model in place (also used to rebuild a saved model's shapes);
    quantize=False leaves int8-marked layers in fp32 for recovery or a runtime's export.
    PyTorch has no int4 kernels: int4-marked layers stay in fp32 here, and the openvino
    runtime's export compresses them."""
    adapter = adapter_for(model)
    head_dim = adapter.head_dim(model)
    for layer, layer_plan in zip(adapter.layers(model), plan.layers):
        if not layer_plan.drop:
            compress_layer(layer, layer_plan, adapter, head_dim, quantize=_torch_int8(model) if quantize else None)
    adapter.drop_layers(model, [i for i, p in enumerate(plan.layers) if p.drop])
    if quantize and plan.head == Precision.INT8:
        quantize_head_(model)


def quantize_planned_layers(model: nn.Module, plan: CompressionPlan) -> None:
    """int8 for the layers the plan marks (on a model whose dropped layers are gone)."""
    adapter = adapter_for(model)
    int8 = torch_int8_for(model)
    for layer, layer_plan in zip(adapter.layers(model), plan.kept_layers()):
        if layer_plan.weights == Precision.INT8:
            int8(conv1d_to_linear_(layer))
    if plan.head == Precision.INT8:
        quantize_head_(model)


def quantize_head_(model: nn.Module) -> None:
    """A causal LM's output head in int8 weights (untied from the input embedding, which stays)."""
    model.lm_head = torch_int8_for(model)(model.lm_head)


def _torch_int8(model: nn.Module) -> Callable[[nn.Module, Precision], nn.Module]:
    int8 = torch_int8_for(model)
    return lambda layer, precision: int8(layer)  # int8 is the one precision PyTorch quantizes


def torch_int8_for(model: nn.Module) -> Callable[[nn.Module], nn.Module]:
    """PyTorch's int8 for the model's kind: weights only for causal LMs, dynamic for encoders."""
    weights_only = family_of(model).causal
    return lambda layer: torch_int8_(layer, weights_only)


def magnitude_sparsify_(weight: torch.Tensor, sparsity: float) -> None:
    """Zeroes the smallest-magnitude fraction of a weight matrix. This shrinks the saved
    file (zeros are stored as a bitmask) but dense CPU kernels run no faster."""
    count = int(weight.numel() * sparsity)
    if count == 0:
        return
    with torch.no_grad():
        threshold = weight.abs().flatten().kthvalue(count).values
        weight.masked_fill_(weight.abs() <= threshold, 0.0)


def conv1d_to_linear_(layer: nn.Module) -> nn.Module:
    """GPT-2 keeps its projections in Conv1D ([in, out] weights); int8 kernels want nn.Linear."""
    for parent in layer.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                linear = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                linear.weight.data.copy_(child.weight.detach().T)
                linear.bias.data.copy_(child.bias.detach())
                setattr(parent, name, linear)
    return layer
