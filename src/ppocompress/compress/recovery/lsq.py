"""Least-squares recovery after pruning (distillation, which can follow it, is in
distillation.py).

refit_projections: closed-form refit of every pruned output projection (attention out,
FFN down): given the inputs it sees inside the *compressed* model on calibration text,
it is refit to reproduce what the *dense* projection outputs there. One dense pass, then
one pass through the compressed model layer by layer, in order, collect X^T X and X^T Y; a
ridge-regularised solve does the rest. The ridge strength is chosen per projection on
validation text (a source the fit never saw) from RIDGES, by the error it leaves there.
refit_to_subset is the cheap variant a search uses: from the dense model's input
statistics alone (projection_grams), one solve per projection, for any subset of heads
or neurons. refit_on_dense_inputs applies it to a whole pruned model: how a causal LM is
recovered, because on one the sequential refit moves the next-token distributions
further from the dense model's than no refit at all (docs/decoders.md), while the refit
on dense inputs brings them closer, exactly as the search priced it. Both run on the
fp32 pruned model, before int8 quantization.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ppocompress.compress.data.calibration import BATCH_SIZE, MAX_LENGTH, LayerCalls, watch_inputs
from ppocompress.compress.models.families import adapter_for
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.ops.apply import kept_inputs
from ppocompress.compress.ops.importance import output_weight
from ppocompress.errors import UserError

DEFAULT_RIDGE = 1e-3  # relative to the mean squared input; without validation text, and in the search
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the candidates validation text chooses from
Statistics = tuple[torch.Tensor, torch.Tensor]  # ([X 1]^T [X 1], [X 1]^T Y) of one projection


def refit_projections(dense: LoadedModel, compressed: LoadedModel, texts: list[str], validation: list[str] | None = None,
                      ridge: float | None = None, batch_size: int = BATCH_SIZE, max_length: int = MAX_LENGTH) -> dict[str, float]:
    """Least-squares refit of the pruned layers' output projections, each with the ridge
    of RIDGES that leaves the least error on `validation` (DEFAULT_RIDGE without it), or
    with `ridge` if one is given. Returns the ridge of each refit projection, keyed
    "<layer>.attn" / "<layer>.ffn"."""
    if not texts:
        raise UserError("least-squares recovery needs calibration text")
    ridges = (ridge,) if ridge is not None else RIDGES if validation else (DEFAULT_RIDGE,)
    if len(ridges) == 1:
        validation = None
    targets, sources = _pruned_projections(dense, compressed)
    if not targets:
        return {}
    texts_of = {part: passages for part, passages in (("fit", texts), ("validation", validation)) if passages}
    # The dense and the compressed model side by side, layer by layer, each from its layers'
    # recorded inputs (LayerCalls): at a pruned layer, the dense projections' outputs Y and
    # the compressed ones' inputs X give [X 1]^T [X 1] and [X 1]^T Y, solved; then the
    # refit layer's outputs become the next layer's inputs. Going in order lets each refit
    # see the inputs that the earlier refits produce, for one pass through each model in
    # all, and only one layer's outputs are held at a time.
    dense_layers = list(adapter_for(dense.model).layers(dense.model))
    small_layers = list(adapter_for(compressed.model).layers(compressed.model))
    position = {old: new for new, old in enumerate(compressed.plan.kept_indices())}  # dense layer -> compressed layer
    stages: dict[int, dict[str, nn.Module]] = {}  # dense layer -> its pruned projections
    for name, module in targets.items():
        stages.setdefault(int(name.split(".")[0]), {})[name] = module
    last = max(stages)
    dense_calls = {part: LayerCalls(dense.model, dense.tokenizer, passages, dense_layers[:last + 1], batch_size, max_length)
                   for part, passages in texts_of.items()}
    small_calls = {part: LayerCalls(compressed.model, compressed.tokenizer, passages, small_layers[:position[last] + 1],
                                    batch_size, max_length) for part, passages in texts_of.items()}
    chosen: dict[str, float] = {}
    for old in range(last + 1):
        stage = stages.get(old, {})
        outputs = {part: _dense_outputs(dense_layers[old], old, calls, {name: sources[name] for name in stage})
                   for part, calls in dense_calls.items()}  # and the dense inputs moved on through the layer
        new = position.get(old)
        if stage:
            statistics = {part: _statistics(small_layers[new], new, calls, stage, outputs[part])
                          for part, calls in small_calls.items()}
            for name, module in stage.items():
                held_out = statistics["validation"][name] if len(ridges) > 1 else None
                chosen[name] = _refit(module, statistics["fit"][name], held_out, ridges)
        if new is not None and old < last:
            for calls in small_calls.values():
                calls.run(small_layers[new], new)
    return chosen


def refit_on_dense_inputs(dense: LoadedModel, compressed: LoadedModel, texts: list[str]) -> dict[str, float]:
    """Each pruned output projection of `compressed` refit by refit_to_subset on the dense
    model's inputs over `texts`, with DEFAULT_RIDGE as the search prices it; returns the
    ridges as refit_projections does."""
    targets, sources = _pruned_projections(dense, compressed)
    if not targets:
        return {}
    grams = projection_grams(dense, texts, only=set(targets))
    adapter = adapter_for(dense.model)
    head_dim = adapter.head_dim(dense.model)
    dense_layers = adapter.layers(dense.model)
    for name, module in targets.items():
        index, kind = name.split(".")
        columns = kept_inputs(dense_layers[int(index)], compressed.plan.layers[int(index)], adapter, head_dim)[kind]
        refit_to_subset(module, sources[name], grams[name], columns)
    return dict.fromkeys(targets, DEFAULT_RIDGE)


def _pruned_projections(dense: LoadedModel, compressed: LoadedModel) -> tuple[dict[str, nn.Module], dict[str, nn.Module]]:
    """The output projections the plan pruned, in forward order: (name -> the module in the
    compressed model to refit, name -> the same projection in the dense model), named
    "<dense layer>.attn" / "<dense layer>.ffn"."""
    plan = compressed.plan
    dense_adapter, small_adapter = adapter_for(dense.model), adapter_for(compressed.model)
    dense_layers, small_layers = dense_adapter.layers(dense.model), small_adapter.layers(compressed.model)
    targets: dict[str, nn.Module] = {}
    sources: dict[str, nn.Module] = {}
    for new_index, old_index in enumerate(plan.kept_indices()):
        layer_plan = plan.layers[old_index]
        if layer_plan.keep_groups is not None:
            targets[f"{old_index}.attn"] = small_adapter.attention_output(small_layers[new_index])
            sources[f"{old_index}.attn"] = dense_adapter.attention_output(dense_layers[old_index])
        if layer_plan.keep_neurons is not None:
            targets[f"{old_index}.ffn"] = small_adapter.ffn_output(small_layers[new_index])
            sources[f"{old_index}.ffn"] = dense_adapter.ffn_output(dense_layers[old_index])
    return targets, sources


def _dense_outputs(layer: nn.Module, index: int, calls: LayerCalls,
                   sources: dict[str, nn.Module]) -> dict[str, list[torch.Tensor]]:
    """What each of `sources`, projections of the dense model's `index`-th layer, outputs
    there, token by token, a tensor per batch in order; the calls move on through the layer."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in sources}

    def record(name: str, x: torch.Tensor) -> None:
        outputs[name].append(_apply(sources[name], x))

    calls.run(layer, index, record, sources)
    return outputs


def _refit(module: nn.Module, fit: Statistics, held_out: Statistics | None, ridges: tuple[float, ...]) -> float:
    """Refits `module` from the fit's statistics with the ridge of `ridges` that leaves the
    least error on the held-out ones (given when there is a choice); returns the ridge."""
    gram, cross = fit
    width = gram.shape[0] - 1
    keep = slice(None) if module.bias is not None else slice(0, width)  # no bias to absorb a constant: fit without one
    scale = gram.diagonal()[:-1].mean()

    def solve(ridge: float) -> torch.Tensor:
        return _ridge_solve(gram[keep, keep], cross[keep], ridge, scale)

    chosen = ridges[0]
    if len(ridges) > 1:
        held_gram, held_cross = held_out[0][keep, keep], held_out[1][keep]
        chosen = min(ridges, key=lambda ridge: _held_out_error(solve(ridge), held_gram, held_cross))
    solution = solve(chosen)
    _set_weight_bias(module, solution[:width].T.float(), solution[-1].float())
    return chosen


def _statistics(layer: nn.Module, index: int, calls: LayerCalls, stage: dict[str, nn.Module],
                dense_outputs: dict[str, list[torch.Tensor]]) -> dict[str, Statistics]:
    """[X 1]^T [X 1] and [X 1]^T Y of each of the stage's projections in `layer`, the
    compressed model's `index`-th, X their inputs there and Y the dense projections' outputs."""
    gram: dict[str, torch.Tensor] = {}
    cross: dict[str, torch.Tensor] = {}
    cursor = dict.fromkeys(stage, 0)

    def accumulate(name: str, x: torch.Tensor) -> None:
        y = dense_outputs[name][cursor[name]]
        cursor[name] += 1
        xa = _with_ones(x)
        # Products per batch in float32 (fast), sums across batches in float64.
        gram[name] = gram.get(name, 0) + (xa.T @ xa).double()
        cross[name] = cross.get(name, 0) + (xa.T @ y).double()

    calls.run(layer, index, accumulate, stage, advance=False)
    return {name: (gram[name], cross[name]) for name in stage}


def _held_out_error(solution: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor) -> float:
    """|XW - Y|^2 - |Y|^2 on held-out inputs, from their X^T X and X^T Y: the error up to a
    constant, which is all a choice between solutions needs."""
    return float((solution * (gram @ solution)).sum() - 2 * (solution * cross).sum())


def projection_grams(dense: LoadedModel, texts: list[str], batch_size: int = BATCH_SIZE,
                     max_length: int = MAX_LENGTH, only: set[str] | None = None) -> dict[str, torch.Tensor]:
    """[X 1]^T [X 1] of the inputs X of every layer's output projections in the dense
    model (or of those named in `only`), keyed "<layer>.attn" and "<layer>.ffn". The dense
    outputs are [X 1] [W b]^T, so these alone let refit_to_subset refit a projection to any
    subset of its inputs with one solve: how a search prices recovery for many pruning
    levels without a pass each."""
    if not texts:
        raise UserError("least-squares recovery needs calibration text")
    adapter = adapter_for(dense.model)
    modules: dict[str, nn.Module] = {}
    for index, layer in enumerate(adapter.layers(dense.model)):
        modules[f"{index}.attn"] = adapter.attention_output(layer)
        modules[f"{index}.ffn"] = adapter.ffn_output(layer)
    if only is not None:
        modules = {name: module for name, module in modules.items() if name in only}
    grams: dict[str, torch.Tensor] = {}

    def accumulate(name: str, x: torch.Tensor) -> None:
        xa = _with_ones(x)
        grams[name] = grams.get(name, 0) + (xa.T @ xa).double()

    watch_inputs(dense.model, dense.tokenizer, texts, modules, accumulate, batch_size, max_length)
    return grams


def refit_to_subset(module: nn.Module, dense_module: nn.Module, gram: torch.Tensor, columns: torch.Tensor,
                    ridge: float = DEFAULT_RIDGE) -> None:
    """Refits `module`, the dense projection `dense_module` cut to its input `columns`,
    to reproduce the dense outputs on the inputs `gram` summarises (see projection_grams).
    The inputs are the dense model's, so this is the non-sequential refit: cheaper and a
    little weaker than refit_projections, which sees the compressed model's own inputs."""
    weight, bias = output_weight(dense_module).double(), dense_module.bias
    constant = gram.shape[0] - 1
    dense_map = torch.cat([weight.T, torch.zeros(1, weight.shape[0], dtype=torch.float64) if bias is None
                           else bias.detach().double()[None]])
    index = columns.long() if bias is None else torch.cat([columns.long(), torch.tensor([constant])])
    scale = gram.diagonal()[columns.long()].mean()
    solution = _ridge_solve(gram[index][:, index], gram[index] @ dense_map, ridge, scale)
    _set_weight_bias(module, solution[: len(columns)].T.float(), solution[-1].float())


def _ridge_solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float, scale: torch.Tensor) -> torch.Tensor:
    """argmin_W |XW - Y|^2 + ridge * scale * |W|^2 from X^T X and X^T Y. scale is the mean
    squared input feature, so one ridge value suits activations of any size."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram + ridge * scale.clamp(min=1e-12) * eye, cross)


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    """[X 1]: the inputs with a column of ones, whose weight is the bias."""
    return torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)


def _apply(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The projection's output, computed directly (calling the module would re-enter the hook)."""
    return nn.functional.linear(x, output_weight(module), module.bias)


def _set_weight_bias(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """weight given as [out, in]; Conv1D stores the transpose."""
    with torch.no_grad():
        module.weight.copy_(weight.T if isinstance(module, Conv1D) else weight)
        if module.bias is not None:
            module.bias.copy_(bias)
