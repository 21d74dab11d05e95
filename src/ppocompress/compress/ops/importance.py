"""Which heads, neurons and layers matter: scores that rank what to remove.

- magnitude: weight norms only (no data);
- activation: each attention group's / neuron's contribution to the output norm on
  calibration text (Wanda-style: weights times the activations they actually see);
- block influence: 1 - cosine between a layer's input and output hidden states
  (ShortGPT): a layer that barely changes its input is the cheapest to drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ppocompress.compress.data.calibration import (
    BATCH_SIZE,
    MAX_LENGTH,
    batches,
    forward,
    watch_inputs,
)
from ppocompress.compress.models.architecture import LayerInfo
from ppocompress.compress.models.families import adapter_for, layer_table
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.plan import CompressionPlan, LayerPlan, Precision
from ppocompress.errors import UserError

METHODS = ("magnitude", "activation")


@dataclass
class LayerImportance:
    groups: torch.Tensor  # one score per attention group (higher = keep)
    neurons: torch.Tensor  # one score per FFN neuron
    block_influence: float  # how much the layer changes the hidden state

    def to_dict(self) -> dict:
        return {"groups": self.groups.tolist(), "neurons": self.neurons.tolist(), "block_influence": self.block_influence}

    @classmethod
    def from_dict(cls, data: dict) -> "LayerImportance":
        return cls(torch.tensor(data["groups"], dtype=torch.float64), torch.tensor(data["neurons"], dtype=torch.float64),
                   data["block_influence"])


def output_weight(module: nn.Module) -> torch.Tensor:
    """An output projection's weight as [out, in], whatever the module type."""
    weight = module.weight.detach()
    return weight.T if isinstance(module, Conv1D) else weight


def importance_scores(loaded: LoadedModel, texts: list[str], method: str = "activation",
                      batch_size: int = BATCH_SIZE, max_length: int = MAX_LENGTH) -> list[LayerImportance]:
    if method not in METHODS:
        raise UserError(f"unknown importance method {method!r}; use one of {', '.join(METHODS)}")
    model = loaded.model
    adapter = adapter_for(model)
    table = layer_table(model)
    layers = adapter.layers(model)
    head_dim = adapter.head_dim(model)
    attn_out = {f"{i}.attn": adapter.attention_output(layer) for i, layer in enumerate(layers)}
    ffn_out = {f"{i}.ffn": adapter.ffn_output(layer) for i, layer in enumerate(layers)}

    # Second moments of each output projection's input: E[x x^T] restricted to what we need.
    group_energy = {name: torch.zeros(info.kv_heads, dtype=torch.float64) for name, info in zip(attn_out, table)}
    neuron_energy = {name: torch.zeros(info.ffn, dtype=torch.float64) for name, info in zip(ffn_out, table)}
    if method == "activation":
        if not texts:
            raise UserError("activation-aware importance needs calibration text")
        group_widths = {f"{i}.attn": info.heads // info.kv_heads * head_dim for i, info in enumerate(table)}
        weights = {name: output_weight(m) for name, m in {**attn_out, **ffn_out}.items()}

        def accumulate(name: str, x: torch.Tensor) -> None:
            if name.endswith(".attn"):
                width = group_widths[name]
                per_group = x.reshape(x.shape[0], -1, width)  # tokens, groups, width
                w = weights[name].reshape(weights[name].shape[0], -1, width)  # out, groups, width
                contribution = torch.einsum("tgw,ogw->tgo", per_group, w)  # each group's output vector
                group_energy[name] += contribution.pow(2).sum(dim=(0, 2)).double()
            else:
                column_norms = weights[name].pow(2).sum(dim=0)
                neuron_energy[name] += (x.pow(2).sum(dim=0) * column_norms).double()

        watch_inputs(model, loaded.tokenizer, texts, {**attn_out, **ffn_out}, accumulate, batch_size, max_length)
    else:
        for (name, module), info in zip(attn_out.items(), table):
            w = output_weight(module)
            group_energy[name] = w.reshape(w.shape[0], info.kv_heads, -1).pow(2).sum(dim=(0, 2)).double()
        for name, module in ffn_out.items():
            neuron_energy[name] = output_weight(module).pow(2).sum(dim=0).double()

    influence = block_influence(loaded, texts, batch_size, max_length) if texts else [float("nan")] * len(table)
    return [
        LayerImportance(group_energy[a], neuron_energy[f], influence[i])
        for i, (a, f) in enumerate(zip(attn_out, ffn_out))
    ]


def block_influence(loaded: LoadedModel, texts: list[str], batch_size: int = BATCH_SIZE,
                    max_length: int = MAX_LENGTH) -> list[float]:
    """Per layer, mean over tokens of 1 - cos(layer input, layer output)."""
    model = loaded.model
    layers = adapter_for(model).layers(model)
    totals = torch.zeros(len(layers), dtype=torch.float64)
    count = 0
    with torch.inference_mode():
        for batch in batches(loaded.tokenizer, texts, batch_size, max_length):
            out = forward(model, batch, output_hidden_states=True).hidden_states  # before the first layer, after each
            mask = batch["attention_mask"].bool()
            for i in range(len(layers)):
                before, after = out[i][mask], out[i + 1][mask]
                totals[i] += (1 - torch.nn.functional.cosine_similarity(before, after, dim=-1)).sum().double()
            count += int(mask.sum())
    return (totals / max(count, 1)).tolist()


def plan_from_scores(
    table: list[LayerInfo],
    scores: list[LayerImportance],
    group_keep: list[float],
    neuron_keep: list[float],
    weights: list[Precision] | None = None,
    drop: list[bool] | None = None,
) -> CompressionPlan:
    """Keeps, in each layer, the top fraction of groups and neurons by score."""
    layers = []
    for i, (info, score) in enumerate(zip(table, scores)):
        groups, neurons = kept_units(info, score, group_keep[i], neuron_keep[i])
        layers.append(
            LayerPlan(
                keep_groups=groups,
                keep_neurons=neurons,
                drop=bool(drop[i]) if drop else False,
                weights=weights[i] if weights else Precision.FLOAT,
            )
        )
    return CompressionPlan(layers)


def kept_units(info: LayerInfo, score: LayerImportance, group_keep: float,
               neuron_keep: float) -> tuple[list[int] | None, list[int] | None]:
    """The attention groups and FFN neurons a layer keeps at these fractions: the top ones
    by score (at least one of each), sorted; None where it keeps them all."""
    groups = max(1, round(group_keep * info.kv_heads))
    neurons = max(1, round(neuron_keep * info.ffn))
    return (None if groups == info.kv_heads else _top(score.groups, groups),
            None if neurons == info.ffn else _top(score.neurons, neurons))


def layers_to_drop(scores: list[LayerImportance], count: int) -> list[int]:
    """The `count` layers with the least block influence."""
    order = sorted(range(len(scores)), key=lambda i: scores[i].block_influence)
    return sorted(order[:count])


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.topk(scores, k).indices.tolist())
