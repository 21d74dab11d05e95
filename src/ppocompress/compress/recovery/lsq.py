"""Least-squares recovery after pruning (distillation, which can follow it, is in
distillation.py).

refit_projections: closed-form refit of every pruned output projection (attention out,
FFN down): given the inputs it sees inside the *compressed* model on calibration text,
it is refit to reproduce what the *dense* projection outputs there. One dense pass, then
one compressed pass per pruned layer, in order, collect X^T X and X^T Y; a
ridge-regularised solve does the rest. The ridge strength is chosen per projection on
validation text (a source the fit never saw) from RIDGES, by the error it leaves there.
refit_to_subset is the cheap variant a search uses: from the dense model's input
statistics alone (projection_grams), one solve per projection, for any subset of heads
or neurons. Both run on the fp32 pruned model, before int8 quantization.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ppocompress.compress.data.calibration import watch_inputs
from ppocompress.compress.models.families import adapter_for
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.ops.importance import output_weight
from ppocompress.errors import UserError

DEFAULT_RIDGE = 1e-3  # relative to the mean squared input; without validation text, and in the search
RIDGES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the candidates validation text chooses from


def refit_projections(dense: LoadedModel, compressed: LoadedModel, texts: list[str], validation: list[str] | None = None,
                      ridge: float | None = None, batch_size: int = 32, max_length: int = 128) -> dict[str, float]:
    """Least-squares refit of the pruned layers' output projections, each with the ridge
    of RIDGES that leaves the least error on `validation` (DEFAULT_RIDGE without it), or
    with `ridge` if one is given. Returns the ridge of each refit projection, keyed
    "<layer>.attn" / "<layer>.ffn"."""
    if not texts:
        raise UserError("least-squares recovery needs calibration text")
    ridges = (ridge,) if ridge is not None else RIDGES if validation else (DEFAULT_RIDGE,)
    if len(ridges) == 1:
        validation = None
    plan = compressed.plan
    kept_layers = [i for i, p in enumerate(plan.layers) if not p.drop]
    dense_adapter, small_adapter = adapter_for(dense.model), adapter_for(compressed.model)
    dense_layers, small_layers = dense_adapter.layers(dense.model), small_adapter.layers(compressed.model)
    targets: dict[str, nn.Module] = {}  # name -> module in the compressed model to refit
    sources: dict[str, nn.Module] = {}  # name -> the same projection in the dense model
    for new_index, old_index in enumerate(kept_layers):
        layer_plan = plan.layers[old_index]
        if layer_plan.keep_groups is not None:
            targets[f"{old_index}.attn"] = small_adapter.attention_output(small_layers[new_index])
            sources[f"{old_index}.attn"] = dense_adapter.attention_output(dense_layers[old_index])
        if layer_plan.keep_neurons is not None:
            targets[f"{old_index}.ffn"] = small_adapter.ffn_output(small_layers[new_index])
            sources[f"{old_index}.ffn"] = dense_adapter.ffn_output(dense_layers[old_index])
    if not targets:
        return {}
    texts_of = {"fit": texts, "validation": validation or []}

    # Pass 1, dense model: what each projection outputs, token by token (kept in order).
    dense_outputs = {part: {name: [] for name in sources} for part in texts_of if texts_of[part]}
    for part in dense_outputs:
        def record_dense(name: str, x: torch.Tensor, outputs=dense_outputs[part]) -> None:
            outputs[name].append(_apply(sources[name], x))

        watch_inputs(dense.model, dense.tokenizer, texts_of[part], sources, record_dense, batch_size, max_length)

    # Then, layer by layer, the compressed model: accumulate [X 1]^T [X 1] and [X 1]^T Y
    # and solve. Going in order lets each refit see the inputs that the earlier refits
    # produce; each pass stops once it has passed the layer it refits.
    stages: dict[str, dict[str, nn.Module]] = {}
    for name, module in targets.items():
        stages.setdefault(name.split(".")[0], {})[name] = module
    chosen: dict[str, float] = {}
    for stage in stages.values():
        statistics = {part: _statistics(compressed, texts_of[part], stage, dense_outputs[part], batch_size, max_length)
                      for part in dense_outputs}
        for name, module in stage.items():
            gram, cross = statistics["fit"][name]
            width = gram.shape[0] - 1
            keep = slice(None) if module.bias is not None else slice(0, width)  # no bias to absorb a constant: fit without one
            scale = gram.diagonal()[:-1].mean()

            def solve(ridge: float) -> torch.Tensor:
                return _ridge_solve(gram[keep, keep], cross[keep], ridge, scale)

            if len(ridges) > 1:
                held_gram, held_cross = statistics["validation"][name]
                held_gram, held_cross = held_gram[keep, keep], held_cross[keep]
                chosen[name] = min(ridges, key=lambda ridge: _held_out_error(solve(ridge), held_gram, held_cross))
            else:
                chosen[name] = ridges[0]
            solution = solve(chosen[name])
            _set_weight_bias(module, solution[:width].T.float(), solution[-1].float())
    return chosen


def _statistics(compressed: LoadedModel, texts: list[str], stage: dict[str, nn.Module], dense_outputs: dict[str, list[torch.Tensor]],
                batch_size: int, max_length: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """[X 1]^T [X 1] and [X 1]^T Y of each of the stage's projections, X its inputs in the
    compressed model and Y the dense projection's outputs, on `texts`."""
    gram: dict[str, torch.Tensor] = {}
    cross: dict[str, torch.Tensor] = {}
    cursor = dict.fromkeys(stage, 0)

    def accumulate(name: str, x: torch.Tensor) -> None:
        y = dense_outputs[name][cursor[name]]
        cursor[name] += 1
        xa = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
        # Products per batch in float32 (fast), sums across batches in float64.
        gram[name] = gram.get(name, 0) + (xa.T @ xa).double()
        cross[name] = cross.get(name, 0) + (xa.T @ y).double()

    watch_inputs(compressed.model, compressed.tokenizer, texts, stage, accumulate, batch_size, max_length, stop_early=True)
    return {name: (gram[name], cross[name]) for name in stage}


def _held_out_error(solution: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor) -> float:
    """|XW - Y|^2 - |Y|^2 on held-out inputs, from their X^T X and X^T Y: the error up to a
    constant, which is all a choice between solutions needs."""
    return float((solution * (gram @ solution)).sum() - 2 * (solution * cross).sum())


def projection_grams(dense: LoadedModel, texts: list[str], batch_size: int = 32, max_length: int = 128) -> dict[str, torch.Tensor]:
    """[X 1]^T [X 1] of the inputs X of every layer's output projections in the dense
    model, keyed "<layer>.attn" and "<layer>.ffn". The dense outputs are [X 1] [W b]^T, so
    these alone let refit_to_subset refit a projection to any subset of its inputs with
    one solve: how a search prices recovery for many pruning levels without a pass each."""
    if not texts:
        raise UserError("least-squares recovery needs calibration text")
    adapter = adapter_for(dense.model)
    modules: dict[str, nn.Module] = {}
    for index, layer in enumerate(adapter.layers(dense.model)):
        modules[f"{index}.attn"] = adapter.attention_output(layer)
        modules[f"{index}.ffn"] = adapter.ffn_output(layer)
    grams: dict[str, torch.Tensor] = {}

    def accumulate(name: str, x: torch.Tensor) -> None:
        xa = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
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


def _apply(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The projection's output, computed directly (calling the module would re-enter the hook)."""
    return nn.functional.linear(x, output_weight(module), module.bias)


def _set_weight_bias(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """weight given as [out, in]; Conv1D stores the transpose."""
    with torch.no_grad():
        module.weight.copy_(weight.T if isinstance(module, Conv1D) else weight)
        if module.bias is not None:
            module.bias.copy_(bias)
