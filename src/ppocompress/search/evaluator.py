"""Scoring plans quickly: the cost of a search is its evaluations.

- the dense model's embeddings of the calibration subsets are computed once;
- each (layer, level) is built once and kept (a database of compressed layers, as
  EvoPress keeps): a plan is evaluated by swapping those layers into the dense model;
- recovery is priced in: with recovery="lsq" each compressed layer's output projections
  are refit (least squares, to the dense outputs on other calibration text) when the
  layer is built, so the search ranks plans by the quality they will have after recovery,
  not before (pruning FFN neurons recovers far better than pruning heads or dropping);
- int8 is priced as the serving runtime computes it (see quantize.SimulatedInt8Linear):
  static int8 with ranges calibrated on the scored passages for OpenVINO, per-call
  ranges for ONNX Runtime, torch's own kernels for PyTorch;
- multi-fidelity: a small calibration subset for every plan, a larger one for the few
  best (the search asks for it).
Quality is fidelity to the dense model (compress/measure/fidelity.py): mean cosine of sentence
embeddings for encoders, exp(-KL) of next-token distributions for causal LMs; reward.py
turns it into the reward.

The engine's plan of a search plan (which attention groups and FFN neurons each layer
keeps) is made here, once: compression_plan, which PlanEvaluator.plan applies with the
importance scores.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from ppocompress.compress import (
    CompressionPlan,
    LayerPlan,
    LoadedModel,
    Precision,
    adapter_for,
    layer_table,
)
from ppocompress.compress.data.calibration import input_statistics
from ppocompress.compress.measure.fidelity import fidelity_for
from ppocompress.compress.models.architecture import LayerInfo
from ppocompress.compress.ops.apply import compress_layer, kept_inputs
from ppocompress.compress.ops.importance import LayerImportance, kept_units
from ppocompress.compress.ops.quantize import InputStatistics
from ppocompress.compress.ops.weight_compression import AWQ_PASSAGES, INT4_SIMULATION
from ppocompress.compress.recovery.lsq import projection_grams, refit_to_subset
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import get_runtime
from ppocompress.errors import UserError
from ppocompress.search.levels import DENSE, Level
from ppocompress.search.plan import Plan, level_names
from ppocompress.search.reward import quality_lost

# The compressed layers kept for plans to come (a database of every layer at every level of
# SmolLM2's menu would take 15 GB); a layer built again costs a fraction of its evaluation.
LAYER_CACHE_BYTES = 2 * 2**30
LOW_FIDELITY, HIGH_FIDELITY = 64, 256  # calibration passages a plan is scored on
# A causal LM's score costs a forward pass with the full vocabulary per token (passages are
# cut at fidelity.CAUSAL_MAX_LENGTH tokens), so it is scored on fewer passages, and its
# one-off sensitivities (a plan per layer and level) on fewer still.
CAUSAL_PROBE, CAUSAL_LOW_FIDELITY, CAUSAL_HIGH_FIDELITY = 4, 8, 64


def fidelity_passages(causal: bool) -> dict[str, int]:
    """How many calibration passages a plan is scored on: "probe" for the one-off
    sensitivities, "low" during a search, "high" for its finalists."""
    if causal:
        return {"probe": CAUSAL_PROBE, "low": CAUSAL_LOW_FIDELITY, "high": CAUSAL_HIGH_FIDELITY}
    return {"probe": LOW_FIDELITY, "low": LOW_FIDELITY, "high": HIGH_FIDELITY}


# The fidelities whose passages' dense layer outputs are kept to be replayed (see _Replay):
# those of the many cheap evaluations, not the finalists' larger subset, whose outputs
# would take hundreds of MB.
REPLAYED = ("probe", "low")

Qualities = Callable[[list[Plan], str], Iterable[float]]  # (plans, fidelity) -> their qualities, in order


def compression_plan(plan: Plan, menu: Sequence[Level], table: Sequence[LayerInfo],
                     scores: Sequence[LayerImportance] | None = None, head: Precision = Precision.FLOAT) -> CompressionPlan:
    """The engine's plan for a search plan: each layer, at its level, keeps its top attention
    groups and FFN neurons by `scores`; without scores (pricing: which units a layer keeps
    does not change its cost) the first ones. head: the precision of a causal LM's output head."""
    return CompressionPlan([layer_plan(info, menu[level], None if scores is None else scores[index])
                            for index, (info, level) in enumerate(zip(table, plan))], head=head)


def searched_head(dense: LoadedModel) -> Precision:
    """The output head every searched plan of this model carries: int8 for a causal LM
    (see CompressionPlan.head), float for an encoder, which has none."""
    return Precision.INT8 if dense.is_causal else Precision.FLOAT


def layer_plan(info: LayerInfo, level: Level, score: LayerImportance | None = None) -> LayerPlan:
    """What one layer keeps at `level` (see compression_plan)."""
    groups, neurons = kept_units(info, _by_position(info) if score is None else score, level.group_keep, level.neuron_keep)
    weights = Precision.FLOAT if level.drop else level.weights
    return LayerPlan(keep_groups=groups, keep_neurons=neurons, drop=level.drop, weights=weights)


def _by_position(info: LayerInfo) -> LayerImportance:
    """Scores that rank a layer's units by position, so that the first ones are kept."""
    return LayerImportance(torch.arange(info.kv_heads, 0, -1, dtype=torch.float64),
                           torch.arange(info.ffn, 0, -1, dtype=torch.float64), block_influence=0.0)


class PlanEvaluator:
    def __init__(self, dense: LoadedModel, menu: list[Level], scores: list[LayerImportance], calibration: list[str],
                 low_fidelity: int | None = None, high_fidelity: int | None = None, recovery: str = "none",
                 recovery_texts: list[str] | None = None, runtime: str = "onnxruntime"):
        """Plans are scored on calibration[:low_fidelity] or [:high_fidelity] (by default
        fidelity_passages); with recovery "lsq", layers are refit on recovery_texts (best
        kept apart from those). int8 layers are scored as `runtime` computes them."""
        passages = fidelity_passages(dense.is_causal)
        passages.update({k: v for k, v in (("low", low_fidelity), ("high", high_fidelity)) if v})
        low_fidelity = passages["low"]
        passages["probe"] = min(passages["probe"], low_fidelity)
        if len(calibration) < low_fidelity:
            raise UserError(f"the search needs at least {low_fidelity} calibration passages, got {len(calibration)}")
        self.dense = dense
        self.menu = menu
        self.scores = scores
        self.runtime = get_runtime(runtime)
        if Recovery.parse(recovery) not in (Recovery.NONE, Recovery.LSQ):
            raise UserError(f"the search prices recovery 'none' or 'lsq', got {recovery!r} (distill is for delivery only)")
        self.adapter = adapter_for(dense.model)
        self.dense_layers = list(self.adapter.layers(dense.model))  # the originals, while swapped() replaces them
        self.head_dim = self.adapter.head_dim(dense.model)
        self.table = layer_table(dense.model)
        self.grams = projection_grams(dense, recovery_texts or calibration) if recovery == Recovery.LSQ else None
        self.texts = {name: calibration[:count] for name, count in passages.items()}
        by_count = {count: fidelity_for(dense, calibration[:count]) for count in sorted(set(passages.values()))}
        self.fidelity = {name: by_count[count] for name, count in passages.items()}
        self.head = searched_head(dense)
        self._head = self._int8_head() if self.head == Precision.INT8 else None
        self._layers: OrderedDict[tuple[int, int], nn.Module] = OrderedDict()  # least recently used first
        self._bytes: dict[tuple[int, int], int] = {}  # each kept layer's parameters and buffers
        self._recorded: dict[str, list[list]] = {}  # fidelity -> each dense layer's outputs, call by call
        self._statistics: dict[str, InputStatistics] | None = None  # "<layer>.<Linear>" -> its dense inputs
        # ("<layer>.<Linear>", inputs kept) -> its dense inputs cut to those, kept so that the
        # rows fitted to them (InputStatistics.fitted) are found again when a layer is rebuilt
        self._cut: dict[tuple[str, tuple[int, ...]], InputStatistics] = {}
        self._int4_texts = calibration[:AWQ_PASSAGES]  # what delivery's data-aware int4 fits to
        # Two evaluators with the same identity give every plan the same reward.
        self.identity = hashlib.sha256(json.dumps({
            "model": dense.source, "config": dense.config_scalars(),
            "menu": level_names(menu), "texts": self.texts, "recovery": recovery,
            "recovery_texts": (recovery_texts or calibration) if recovery == Recovery.LSQ else None,
            "int8": self.runtime.int8_kind, **({"int4": [INT4_SIMULATION, self._int4_texts]} if dense.is_causal else {}),
        }, sort_keys=True).encode()).hexdigest()[:16]

    def plan(self, plan: Plan) -> CompressionPlan:
        """The engine's plan for a search plan, as the evaluator scores it: each layer keeps
        its top attention groups and FFN neurons by importance."""
        return compression_plan(plan, self.menu, self.table, self.scores, self.head)

    def layer(self, index: int, level_index: int) -> nn.Module:
        """Layer `index` compressed to menu level `level_index`, built on first use and kept
        while the layers built since take less than LAYER_CACHE_BYTES."""
        key = (index, level_index)
        if key in self._layers:
            self._layers.move_to_end(key)
        else:
            dense_layer = self.dense_layers[index]
            kept = layer_plan(self.table[index], self.menu[level_index], self.scores[index])
            refit = None
            if self.grams is not None:
                def refit(kind: str, projection: nn.Module, columns: torch.Tensor) -> None:
                    dense_projection = (self.adapter.attention_output if kind == "attn" else self.adapter.ffn_output)(dense_layer)
                    refit_to_subset(projection, dense_projection, self.grams[f"{index}.{kind}"], columns)
            layer = compress_layer(copy.deepcopy(dense_layer), kept, self.adapter, self.head_dim, refit,
                                   quantize=lambda layer, precision: self._as_served(index, layer, precision, kept)).eval()
            self._layers[key] = layer
            self._bytes[key] = sum(t.numel() * t.element_size() for t in (*layer.parameters(), *layer.buffers()))
            self._forget_beyond(LAYER_CACHE_BYTES)
        return self._layers[key]

    def _forget_beyond(self, limit: int) -> None:
        """Drops the least recently used layers until the rest take at most `limit` bytes."""
        for key in list(self._layers)[:-1]:
            if sum(self._bytes.values()) <= limit:
                return
            del self._layers[key], self._bytes[key]

    def _int8_head(self) -> nn.Module:
        """The causal LM's output head in int8 as the serving runtime computes it."""
        if not self.runtime.generates:
            raise UserError(f"causal LMs cannot be served on {self.runtime.name}; pass --runtime openvino or torch")
        head = copy.deepcopy(self.dense.model.lm_head)
        return self.runtime.weights_as_served_(head, Precision.INT8, self.dense.model, lambda _: {})

    def _as_served(self, index: int, layer: nn.Module, precision: Precision, kept: LayerPlan) -> None:
        """int8 or int4 as the serving runtime computes it: its own kernels (torch), ranges per
        call (dynamic), ranges calibrated on the passages plans are scored on (static), or
        weights alone, int4 fitted to the dense model's inputs (a decoder on OpenVINO)."""
        def statistics(layer: nn.Module) -> dict[str, InputStatistics]:
            if self.dense.is_causal:
                return self._dense_statistics(index, kept)
            return self._input_statistics(index, layer)

        self.runtime.weights_as_served_(layer, precision, self.dense.model, statistics)

    def _input_statistics(self, index: int, layer: nn.Module, texts: list[str] | None = None) -> dict[str, InputStatistics]:
        """What each Linear in `layer`, placed at `index` in the otherwise dense model, sees
        over `texts`, by default the low-fidelity passages (static int8 calibrates on text likewise)."""
        linears = {name: module for name, module in layer.named_modules() if isinstance(module, nn.Linear)}
        module_list = self.adapter.layers(self.dense.model)
        module_list[index] = layer
        try:
            # Linears are listed in forward order, so the pass stops after this layer's last one.
            return input_statistics(self.dense.model, self.dense.tokenizer, texts or self.texts["low"], linears, stop_early=True)
        finally:
            module_list[index] = self.dense_layers[index]

    def _dense_statistics(self, index: int, kept: LayerPlan) -> dict[str, InputStatistics]:
        """What each Linear of layer `index` sees in the dense model over the passages NNCF's
        data-aware int4 fits to, cut to the inputs `kept` leaves. Exact for the projections
        whose inputs a layer's own pruning only cuts (the attention's and FFN's inputs and
        outputs); the FFN's input after pruned attention is the dense one, which recovery
        restores as far as it can. One pass over the dense model, recorded on first use."""
        if self._statistics is None:
            linears = {f"{i}.{name}": module for i, layer in enumerate(self.dense_layers)
                       for name, module in layer.named_modules() if isinstance(module, nn.Linear)}
            self._statistics = input_statistics(self.dense.model, self.dense.tokenizer, self._int4_texts, linears)
        dense_layer = self.dense_layers[index]
        projection = {"attn": self.adapter.attention_output, "ffn": self.adapter.ffn_output}
        cut = {id(projection[kind](dense_layer)): columns  # id of a dense projection -> its inputs kept
               for kind, columns in kept_inputs(dense_layer, kept, self.adapter, self.head_dim).items()}
        statistics = {}
        for name, module in dense_layer.named_modules():
            if isinstance(module, nn.Linear):
                key = f"{index}.{name}"
                statistics[name] = self._cut_to(key, cut[id(module)]) if id(module) in cut else self._statistics[key]
        return statistics

    def _cut_to(self, key: str, columns: torch.Tensor) -> InputStatistics:
        """The dense inputs of Linear `key` ("<layer>.<name>") cut to `columns`, made once."""
        kept = tuple(columns.tolist())
        if (key, kept) not in self._cut:
            self._cut[key, kept] = self._statistics[key].columns(columns)
        return self._cut[key, kept]

    def quality(self, plan: Plan, fidelity: str = "low") -> float:
        """Fidelity to the dense model on the chosen calibration subset."""
        with self.swapped(plan, self._dense_outputs(fidelity)) as model:
            return self.fidelity[fidelity](model)

    def _dense_outputs(self, fidelity: str) -> list[list] | None:
        """What each dense layer returned, call by call, while the `fidelity` passages were
        scored with every layer dense (recorded once; None for a fidelity not REPLAYED)."""
        if fidelity not in REPLAYED:
            return None
        if fidelity not in self._recorded:
            outputs: list[list] = [[] for _ in self.dense_layers]
            with self.swapped(Plan.uniform(DENSE, len(self.dense_layers))) as model:
                hooks = [layer.register_forward_hook(lambda _m, _a, out, i=i: outputs[i].append(_detached(out)))
                         for i, layer in enumerate(self.adapter.layers(model))]
                try:
                    self.fidelity[fidelity](model)
                finally:
                    for hook in hooks:
                        hook.remove()
            self._recorded[fidelity] = outputs
        return self._recorded[fidelity]

    def qualities(self, plans: list[Plan], fidelity: str = "low") -> Iterator[float]:
        """quality() of each plan, one after another (search/scoring.py's Ray workers score them in parallel)."""
        return (self.quality(plan, fidelity) for plan in plans)

    @contextlib.contextmanager
    def swapped(self, plan: Plan, dense_outputs: list[list] | None = None):
        """The dense model with its layers replaced per `plan`, restored afterwards; with
        the dense layers' recorded outputs (_dense_outputs), the layers before the plan's
        first compressed one replay them instead of computing them."""
        model = self.dense.model
        module_list = self.adapter.layers(model)
        original = list(module_list)
        config = model.config
        saved = {name: copy.copy(getattr(config, name, None)) for name in ("num_hidden_layers", "layer_types")}
        kept = [i for i, level in enumerate(plan) if not self.menu[level].drop]
        first_compressed = next((i for i, level in enumerate(plan) if level != DENSE), len(plan))
        head = getattr(model, "lm_head", None)
        try:
            _replace(module_list, [_Replay(self.dense_layers[i], dense_outputs[i])
                                   if dense_outputs is not None and i < first_compressed else self.layer(i, plan[i])
                                   for i in kept])
            self.adapter.set_num_layers(model, kept)
            if self._head is not None:
                model.lm_head = self._head
            yield model
        finally:
            if self._head is not None:
                model.lm_head = head
            _replace(module_list, original)
            for name, value in saved.items():
                if value is not None:
                    setattr(config, name, value)
            self.adapter.set_num_layers(model, list(range(len(original))))  # layer_idx back in place


class _Replay(nn.Module):
    """A dense layer that returns, call by call, what it returned when the same passages
    were scored with every layer dense: the same result as computing it, for none of the
    work. A one-off sensitivity's plan changes one layer, so on average half of a forward
    pass is replayed. Other attributes are the layer's (a model's loop may read some)."""

    def __init__(self, layer: nn.Module, outputs: list):
        super().__init__()
        self.layer, self.outputs, self.calls = layer, outputs, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.outputs[self.calls - 1]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)


def _detached(output):
    """A layer's output (a tensor, or a tuple holding tensors) kept apart from autograd."""
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, tuple):
        return tuple(_detached(item) for item in output)
    return output


def _replace(module_list: nn.ModuleList, layers: list[nn.Module]) -> None:
    for i in range(len(module_list) - 1, -1, -1):
        del module_list[i]
    module_list.extend(layers)


def sensitivity_evaluations(num_layers: int, num_levels: int) -> int:
    """The plans sensitivity_table scores: each layer at each level but the dense one."""
    return num_layers * (num_levels - 1)


def drop_pair_evaluations(num_layers: int) -> int:
    """The plans drop_pair_table scores: each pair of layers dropped."""
    return num_layers * (num_layers - 1) // 2


def sensitivity_table(qualities: Qualities, num_layers: int, num_levels: int, fidelity: str = "probe",
                      rows: list[list[float]] | None = None, on_layer=None) -> list[list[float]]:
    """Quality lost when only one layer is compressed, for every (layer, level): the
    one-off measurements the agent observes. sensitivity_evaluations, done once, a layer's
    levels as one batch of qualities(plans, fidelity). `rows`: the layers already measured
    (an interrupted table), extended in place; on_layer(rows) after each layer, so that a
    caller can save them."""
    dense = Plan.uniform(DENSE, num_layers)
    return _measure_rows(qualities, num_layers,
                         lambda layer: [dense.with_levels({layer: level}) for level in range(1, num_levels)],
                         fidelity, rows, on_layer, first=[0.0])


def drop_pair_table(qualities: Qualities, num_layers: int, drop: int, fidelity: str = "probe",
                    rows: list[list[float]] | None = None, on_row=None) -> list[list[float]]:
    """Quality lost when exactly two layers are dropped, for every pair: row i holds the
    pairs (i, j) for j > i, one batch of qualities(plans, fidelity) a row: what the
    one-off drops added up miss (a layer's input is another layer's output once its
    neighbour is gone). `rows` and on_row(rows) as for sensitivity_table."""
    dense = Plan.uniform(DENSE, num_layers)
    return _measure_rows(qualities, num_layers - 1, lambda first: [dense.with_levels({first: drop, second: drop})
                                                                   for second in range(first + 1, num_layers)],
                         fidelity, rows, on_row)


def _measure_rows(qualities: Qualities, count: int, plans_of: Callable[[int], list[Plan]], fidelity: str,
                  rows: list[list[float]] | None, on_row, first: list[float] = ()) -> list[list[float]]:
    """Rows len(rows) to count - 1 of a table of quality lost: row r is `first`, then the
    loss of each of plans_of(r), scored as one batch; on_row(rows) after each."""
    rows = [] if rows is None else rows
    for row in range(len(rows), count):
        rows.append([*first, *(quality_lost(quality) for quality in qualities(plans_of(row), fidelity))])
        if on_row is not None:
            on_row(rows)
    return rows
