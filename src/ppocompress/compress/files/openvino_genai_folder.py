"""A causal LM written as the folder OpenVINO GenAI's `LLMPipeline` generates from, and
optimum-intel's `OVModelForCausalLM` loads: a stateful IR (the KV cache kept inside the
model as variables), the tokenizer and detokenizer as IRs, the configs.

Layers may have been pruned to a different number of KV groups and FFN neurons each, and
some dropped: the graph is traced from the modules as they are, with one past key and one
past value input per layer, each of its own shape. That is why the standard export
(optimum's, which assumes one KV head count for the whole model) is not used. A `beam_idx`
input reorders the cache rows, as GenAI's beam search and optimum's generate expect.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ppocompress.compress.files.genai_layout import DETOKENIZER_FILE, MODEL_FILE, TOKENIZER_FILE
from ppocompress.compress.files.onnx_export import additive_mask

if TYPE_CHECKING:
    import openvino as ov

    from ppocompress.compress.models.loading import LoadedModel

_TRACE_PAST, _TRACE_NEW = 2, 3  # token counts of the example the graph is traced with


class _PastCache:
    """The least a transformers decoder asks of its cache: `update` appends a layer's new
    keys and values to its past ones and returns them all. Keyed by the attention
    modules' layer_idx, which the engine renumbers after dropping layers."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]):
        self.layers = past
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = list(past)

    def update(self, key, value, layer_idx, cache_kwargs=None):
        past_key, past_value = self.layers[layer_idx]
        self.present[layer_idx] = (torch.cat([past_key, key], dim=2), torch.cat([past_value, value], dim=2))
        return self.present[layer_idx]


class _StepWrapper(nn.Module):
    """One generation step as a graph: (input_ids, attention_mask, position_ids, beam_idx,
    past keys and values) -> (logits, present keys and values)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, beam_idx, *past):
        pairs = [(past[i].index_select(0, beam_idx), past[i + 1].index_select(0, beam_idx)) for i in range(0, len(past), 2)]
        cache = _PastCache(pairs)
        mask = additive_mask(attention_mask, self.model.dtype, position_ids)
        logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                            past_key_values=cache, use_cache=True).logits
        return (logits, *[tensor for pair in cache.present for tensor in pair])


def kv_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(KV heads, head size) of each layer as the modules are, in layer order."""
    shapes = []
    for layer in model.model.layers:
        attention = layer.self_attn
        shapes.append((attention.k_proj.out_features // attention.head_dim, attention.head_dim))
    return shapes


def past_names(layers: int) -> list[str]:
    return [f"past_key_values.{i}.{part}" for i in range(layers) for part in ("key", "value")]


def trace(model: nn.Module) -> ov.Model:
    """The step graph of `model` (float weights, as the modules hold them), its cache still
    explicit inputs and outputs (make_stateful hides them)."""
    import openvino as ov

    shapes = kv_shapes(model)
    total = _TRACE_PAST + _TRACE_NEW
    example = [torch.ones(1, _TRACE_NEW, dtype=torch.long), torch.ones(1, total, dtype=torch.long),
               torch.arange(_TRACE_PAST, total)[None], torch.zeros(1, dtype=torch.int32)]
    inputs = [ov.PartialShape([-1, -1])] * 3 + [ov.PartialShape([-1])]
    for heads, size in shapes:
        example += [torch.zeros(1, heads, _TRACE_PAST, size)] * 2
        inputs += [ov.PartialShape([-1, heads, -1, size])] * 2
    # transformers repeats the KV groups before SDPA; tracing SDPA's own enable_gqa instead
    # made decode and prefill slower on OpenVINO's CPU plugin (docs/design-notes.md).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values it freezes: shapes fixed per layer anyway
        graph = ov.convert_model(_StepWrapper(model.eval()), example_input=tuple(example), input=inputs)
    past = past_names(len(shapes))
    for port, name in zip(graph.inputs, ["input_ids", "attention_mask", "position_ids", "beam_idx", *past]):
        port.get_tensor().set_names({name})
    for port, name in zip(graph.outputs, ["logits", *[_present(name) for name in past]]):
        port.get_tensor().set_names({name})
    return graph


def _present(past_name: str) -> str:
    return past_name.replace("past_key_values", "present")


def step_feeds(graph: ov.Model, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The inputs of a traced (not yet stateful) graph for a prompt with no cache: what a
    data-aware weight compression runs its calibration text through."""
    ids = np.asarray(input_ids, dtype=np.int64)
    batch, length = ids.shape
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(length, dtype=np.int64)[None],
             "beam_idx": np.arange(batch, dtype=np.int32)}
    for port in graph.inputs:
        name = port.get_any_name()
        if name.startswith("past_key_values"):
            _, heads, _, size = port.get_partial_shape()
            feeds[name] = np.zeros((batch, heads.get_length(), 0, size.get_length()), np.float32)
    return feeds


def make_stateful(graph: ov.Model) -> None:
    """Turns each past input / present output pair into a variable, whose first read in a
    sequence is an empty cache (batch rows as input_ids has, no positions yet)."""
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    past = [port.get_any_name() for port in graph.inputs if port.get_any_name().startswith("past_key_values")]
    apply_make_stateful_transformation(graph, {name: _present(name) for name in past})
    ids = graph.input("input_ids")
    batch = opset13.gather(opset13.shape_of(ids, output_type="i64"), opset13.constant([0]), opset13.constant(0))
    for op in graph.get_ops():
        if op.get_type_name() != "ReadValue":
            continue
        _, heads, _, size = op.get_output_partial_shape(0)
        shape = opset13.concat([batch, opset13.constant(np.array([heads.get_length(), 0, size.get_length()], np.int64))], 0)
        op.set_arguments([opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)), shape)])
    graph.validate_nodes_and_infer_types()


def write_tokenizers(tokenizer, directory: Path) -> None:
    """The tokenizer and detokenizer as OpenVINO IRs (openvino-tokenizers), which
    LLMPipeline runs; the Hugging Face files beside them for OVModelForCausalLM's users."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer

    encoder, decoder = convert_tokenizer(tokenizer, with_detokenizer=True)
    ov.save_model(encoder, str(directory / TOKENIZER_FILE))
    ov.save_model(decoder, str(directory / DETOKENIZER_FILE))
    tokenizer.save_pretrained(directory)


def write_configs(model: nn.Module, directory: Path) -> None:
    """config.json and generation_config.json. GenAI reads the generation config;
    optimum-intel reads the model config. Greedy decoding without the chat template is
    what ppocompress measures; a user's GenerationConfig overrides both."""
    model.config.save_pretrained(directory)
    generation = model.generation_config.to_dict() if model.generation_config is not None else {}
    generation.update(do_sample=False)
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=1))


def save_openvino_genai(loaded: LoadedModel, graph: ov.Model, directory: Path) -> Path:
    """Writes the folder: the (weight-compressed) graph, tokenizers and configs."""
    import openvino as ov

    directory.mkdir(parents=True, exist_ok=True)
    ov.save_model(graph, str(directory / MODEL_FILE))
    write_tokenizers(loaded.tokenizer, directory)
    write_configs(loaded.model, directory)
    return directory / MODEL_FILE
