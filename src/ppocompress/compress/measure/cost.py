"""What a model costs without running it: parameters, bytes and FLOPs (latency is
measured, in timing.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ppocompress.compress.models.architecture import weight_matrix
from ppocompress.compress.models.families import layer_table
from ppocompress.compress.ops.quantize import is_int8_linear, is_packed_int8_linear
from ppocompress.compress.ops.weight_compression import INT4_BITS, INT4_GROUP_SIZE
from ppocompress.compress.plan import Precision
from ppocompress.errors import UserError

INT4_GROUP_BITS = 16 + INT4_BITS  # each int4 group's fp16 scale and int4 zero point, stored beside its codes
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)


def _int8_linears(model: nn.Module) -> list[nn.Module]:
    """int8 Linear modules: their weights are packed or buffers, not parameters()."""
    return [m for m in model.modules() if is_int8_linear(m)]


def _bias(module: nn.Module) -> torch.Tensor | None:
    return module.bias() if callable(module.bias) else module.bias


def count_parameters(model: nn.Module) -> int:
    """Weights and biases, tied weights once, int8 Linear weights included.

    Quantization changes bytes, not the count, so a quantized model reports the same
    number as its float original.
    """
    total = sum(p.numel() for p in model.parameters())
    for module in _int8_linears(model):
        bias = _bias(module)
        total += module.weight().numel() + (0 if bias is None else bias.numel())
    return total


def model_bytes(model: nn.Module) -> int:
    """Bytes the weights occupy: element size per float weight; per int8 Linear, 1 byte
    per weight plus its scales (dynamic: a 4-byte scale and a 1-byte zero point per
    channel, or one pair per tensor; weights only: a 2-byte scale per row) and the float
    bias. Buffers (position ids, masks) are not weights."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in _int8_linears(model):
        weight, bias = module.weight(), _bias(module)
        if is_packed_int8_linear(module):
            scales = weight.q_per_channel_scales().numel() if weight.qscheme() in _PER_CHANNEL else 1
            total += weight.numel() + scales * (4 + 1)
        else:
            total += weight.numel() + module.weight_scale.numel() * module.weight_scale.element_size()
        if bias is not None:
            total += bias.numel() * bias.element_size()
    return total


def bits_per_weight(precision: Precision, float_bits: int) -> float:
    """Bits a served weight takes in `precision`, float ones in `float_bits` (the runtime's):
    int4 counts its group's scale and zero point; int8's per-channel ones are left out
    (a few bytes per row of hundreds of weights)."""
    return {Precision.FLOAT: float(float_bits), Precision.INT8: 8.0,
            Precision.INT4: INT4_BITS + INT4_GROUP_BITS / INT4_GROUP_SIZE}[precision]


def directory_bytes(path: str | Path) -> int:
    """Size on disk of a saved model: all files under a directory, or one file (.onnx)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    raise UserError(f"{path} does not exist; pass a saved model directory or an .onnx file")


def model_flops(model: nn.Module, seq_len: int) -> int:
    """FLOPs (2 per multiply-add) to run one sequence of seq_len tokens.

    Counted: every layer's linear projections, the attention scores and weighted sum
    (over all seq_len keys, as layer_table counts them), and the output head if the
    model has one (a causal LM's lm_head, for every position). Not counted: embedding
    lookups, layer norms, activations, softmax and biases (all linear in the hidden
    size, small next to the matrix products), and BERT's pooler, which the exported
    graph drops.
    """
    per_token = sum(row.flops_per_token for row in layer_table(model, seq_len))
    head = model.get_output_embeddings()  # None for a bare encoder
    if head is not None:
        per_token += 2 * weight_matrix(head).numel()
    return per_token * seq_len
