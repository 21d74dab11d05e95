"""Carrying out a plan: every removal is physical (smaller matrices), never a mask."""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ppocompress.errors import UserError
from ppocompress.compress.architecture import adapter_for, layer_table
from ppocompress.compress.models import LoadedModel
from ppocompress.compress.plan import CompressionPlan
from ppocompress.compress.quantize import quantize_int8_


def apply_plan(loaded: LoadedModel, plan: CompressionPlan, quantize: bool = True) -> LoadedModel:
    """A compressed copy of a dense model; `loaded` is left untouched.

    quantize=False keeps int8-marked layers in fp32 (ONNX export quantizes on its own side).
    """
    if loaded.plan is not None:
        raise UserError("this model is already compressed; apply plans to the dense model")
    plan.validate(layer_table(loaded.model))
    model = copy.deepcopy(loaded.model)
    restructure(model, plan, quantize=quantize)
    return LoadedModel(model, loaded.tokenizer, loaded.model_type, loaded.source, dict(loaded.base_config), plan)


def restructure(model: nn.Module, plan: CompressionPlan, quantize: bool = True) -> None:
    """Applies plan to model in place (also used to rebuild a saved model's shapes)."""
    adapter = adapter_for(model)
    head_dim = adapter.head_dim(model)
    layers = adapter.layers(model)
    for layer, layer_plan in zip(layers, plan.layers):
        if layer_plan.drop:
            continue
        if layer_plan.keep_groups is not None:
            adapter.prune_attention(layer, sorted(layer_plan.keep_groups), head_dim)
        if layer_plan.keep_neurons is not None:
            adapter.prune_ffn(layer, sorted(layer_plan.keep_neurons))
        if layer_plan.sparsity > 0:
            for module in adapter.attention_modules(layer) + adapter.ffn_modules(layer):
                magnitude_sparsify_(module.weight, layer_plan.sparsity)
    adapter.drop_layers(model, [i for i, p in enumerate(plan.layers) if p.drop])
    if quantize:
        quantize_planned_layers(model, plan)


def quantize_planned_layers(model: nn.Module, plan: CompressionPlan) -> None:
    """int8 for the layers the plan marks (on a model whose dropped layers are gone)."""
    adapter = adapter_for(model)
    kept = [layer_plan for layer_plan in plan.layers if not layer_plan.drop]
    for layer, layer_plan in zip(adapter.layers(model), kept):
        if layer_plan.int8:
            quantize_int8_(conv1d_to_linear_(layer))


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
