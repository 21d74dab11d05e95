"""ONNX export of a (possibly pruned) transformer, and ONNX Runtime int8 quantization.

ONNX Runtime's dynamic int8 MatMul is faster than fp32 and loses less quality than
torch's eager int8. The export uses the TorchScript exporter (dynamo=False) because it
needs no onnxscript and writes one self-contained file; OpenVINO converts that same file.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ppocompress.compress.models.families import family, family_of
from ppocompress.compress.ops.quantize import onnx_runtime_reduces_range
from ppocompress.errors import UserError
from ppocompress.fileio import atomic_path

# Two texts of different lengths, so the traced example has a padded row: the graph
# then keeps the general masking path instead of one specialised to "no padding".
_EXAMPLE_TEXTS = ["An example.", "A somewhat longer example sentence, used to trace the export."]
# A protobuf file cannot exceed 2 GiB; bigger models would need external data files.
_MAX_ONNX_BYTES = 2**31 - 2**24


def takes_token_type_ids(model: nn.Module) -> bool:
    """Encoders with segment embeddings take token_type_ids; causal LMs get none (GPT-2
    accepts them but would add an embedding that generation never uses)."""
    return not family_of(model).causal and "token_type_ids" in inspect.signature(model.forward).parameters


class _ExportWrapper(nn.Module):
    """Selects the one tensor the ONNX graph returns: last_hidden_state or logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.causal = family_of(model).causal
        self.takes_4d_mask = family_of(model).takes_4d_mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        causal_positions = torch.ones_like(attention_mask[:1]).cumsum(1) - 1 if self.causal else None
        mask = additive_mask(attention_mask, self.model.dtype, causal_positions) if self.takes_4d_mask else attention_mask
        if self.causal:
            return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=mask, **extra).last_hidden_state


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype, query_positions: torch.Tensor | None = None) -> torch.Tensor:
    """The (batch, 1, query, key) additive mask the model would build from the 2-D one: a key
    is seen when it is not padding and, given the queries' positions (batch, query), not
    after the query (causal). It is passed ready-made because transformers' own mask
    builder reads lengths as Python numbers, which the TorchScript tracer hands it as
    tensors; a 4-D mask is used as it is. Key positions come from a cumulative sum so the
    graph keeps a dynamic length."""
    keep = attention_mask[:, None, None, :].bool()
    if query_positions is not None:
        key_positions = torch.ones_like(attention_mask[0]).cumsum(0) - 1
        keep = keep & (key_positions[None, None, None, :] <= query_positions[:, None, :, None])
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)


def export_onnx(model: nn.Module, tokenizer, path: str | Path, opset: int = 17) -> Path:
    """Writes model as one fp32 ONNX file with dynamic batch and sequence axes.

    Encoders map (input_ids, attention_mask[, token_type_ids]) to last_hidden_state;
    causal LMs map (input_ids, attention_mask) to logits, without a KV cache. Layers may
    have been pruned to different head and FFN counts: the graph is traced from the
    modules as they are. The file carries metadata (model_type, vocab_size): the latency
    worker needs the vocabulary size to draw valid token ids, and quantization keeps it.
    """
    path = Path(path)
    model_type = getattr(model.config, "model_type", "?")
    causal = family(model_type).causal
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > _MAX_ONNX_BYTES:
        raise UserError(f"the model has {size / 2**30:.1f} GiB of weights; "
                        "ONNX export supports at most 2 GiB (one protobuf file)")
    if tokenizer.pad_token is None:
        raise UserError("the tokenizer has no pad token; set tokenizer.pad_token (load_model sets it to the EOS token)")
    batch = tokenizer(_EXAMPLE_TEXTS, padding=True, return_tensors="pt")
    names = ["input_ids", "attention_mask"]
    args = [batch["input_ids"], batch["attention_mask"]]
    if takes_token_type_ids(model):
        names.append("token_type_ids")
        args.append(torch.zeros_like(batch["input_ids"]))
    output = "logits" if causal else "last_hidden_state"
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, and
    # a fresh module is in training mode, which would switch dropout on in the model.
    wrapper = _ExportWrapper(model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, _quiet_export():
        torch.onnx.export(
            wrapper,
            tuple(args),
            str(tmp),
            input_names=names,
            output_names=[output],
            dynamic_axes={name: {0: "batch", 1: "seq"} for name in [*names, output]},
            opset_version=opset,
            dynamo=False,
        )
        graph = onnx.load(str(tmp))
        graph.metadata_props.add(key="model_type", value=model_type)
        graph.metadata_props.add(key="vocab_size", value=str(model.config.vocab_size))
        onnx.save(graph, str(tmp))
    return path


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Hides the exporter's known, harmless warnings: the legacy-exporter deprecation,
    tracer warnings from transformers' shape checks (checked: the graph matches torch for
    other batch sizes, lengths and padding), and the aten::index note."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index", category=UserWarning)
        yield


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata export_onnx wrote (model_type, vocab_size)."""
    graph = onnx.load(str(_existing_onnx(path)), load_external_data=False)
    return {p.key: p.value for p in graph.metadata_props}


def quantize_onnx_int8(
    src: str | Path,
    dst: str | Path,
    layer_indices: list[int] | None = None,
    model_type: str = "bert",
    embeddings: bool = True,
) -> Path:
    """Dynamic int8 quantization (per-channel QInt8 weights) of weight MatMuls.

    layer_indices=None quantizes every weight MatMul/Gemm, including a causal LM's
    output head; a list quantizes only the MatMuls inside those transformer layers (as
    numbered in the exported graph), so a plan can keep sensitive layers fp32.
    embeddings=True also stores the embedding tables (Gather weights) as int8, which
    shrinks the file a lot for the same quality and speed, because ONNX Runtime
    dequantizes only the gathered rows. GPT-2's Conv1D exports as Gemm, which ORT's
    dynamic quantization skips; those Gemms are rewritten to MatMul + Add first.
    """
    src, dst = _existing_onnx(src), Path(dst)
    pattern = family(model_type).graph_layer_pattern()
    graph = onnx.load(str(src))
    _gemm_to_matmul(graph)
    weights = {init.name for init in graph.graph.initializer}
    matmuls = [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    if layer_indices is not None:
        present = {int(m.group(1)) for n in matmuls if (m := pattern.search(n.name))}
        missing = sorted(set(layer_indices) - present)
        if missing:
            raise UserError(f"layers {missing} are not in {src}; its graph has layers {sorted(present)}")
        wanted = set(layer_indices)
        matmuls = [n for n in matmuls if (m := pattern.search(n.name)) and int(m.group(1)) in wanted]
    gathers = [n for n in graph.graph.node if embeddings and n.op_type == "Gather" and n.input[0] in weights]
    nodes = [n.name for n in matmuls + gathers]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        if not nodes:  # ORT reads an empty node list as "all nodes"; nothing to do
            shutil.copyfile(src, tmp)
        else:  # keeps the graph's metadata (model_type, vocab_size)
            _quantize_dynamic(graph, tmp, nodes)
    return dst


class _DropPreprocessHint(logging.Filter):
    """ORT logs a pre-processing hint on every call; symbolic shape inference (the
    pre-processing) fails on these graphs anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "consider to run pre-processing" not in record.getMessage()


def _quantize_dynamic(graph: onnx.ModelProto, out: Path, nodes: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic  # a runtime that may be missing (Runtime.missing)

    hint_filter = _DropPreprocessHint()
    logging.getLogger().addFilter(hint_filter)
    try:
        quantize_dynamic(
            model_input=graph,
            model_output=out,
            op_types_to_quantize=["MatMul", "Gather"],
            nodes_to_quantize=nodes,
            per_channel=True,
            weight_type=QuantType.QInt8,
            reduce_range=onnx_runtime_reduces_range(),
        )
    finally:
        logging.getLogger().removeFilter(hint_filter)


def _gemm_to_matmul(graph: onnx.ModelProto) -> None:
    """Rewrites Gemm(A, W[, C]) with a constant W as MatMul(A, W) + C, in place.

    Only plain Gemms (alpha = beta = 1, A not transposed) are rewritten, which is what
    torch's addmm exports; the MatMul keeps the Gemm's name as a prefix, so the
    layer index stays readable from it.
    """
    weights = {init.name: init for init in graph.graph.initializer}
    nodes = []
    for node in graph.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):  # MatMul needs W as [in, out]
            transposed = numpy_helper.from_array(numpy_helper.to_array(weights[weight]).T.copy(), f"{weight}_T")
            graph.graph.initializer.append(transposed)
            weight = transposed.name
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.name}_MatMul_output" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)


def _existing_onnx(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".onnx":
        raise UserError(f"{path} is not an .onnx file; pass a file written by export_onnx")
    return path
