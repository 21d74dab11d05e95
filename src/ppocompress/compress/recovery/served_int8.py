"""Training layers that will be served in int8 as they will be computed.

A model recovered in fp32 and quantized afterwards loses again to int8 what recovery won
back: for a plan that keeps most of the model and puts every layer in int8, most of the
loss left is int8's. So while distillation trains, the int8-marked layers compute as the
serving runtime's int8 does, and the gradients pass through the rounding as if it were
not there (the straight-through estimator), to the float weights the runtime quantizes
on export. Only dynamic int8 (ONNX Runtime's: input ranges taken on every call) is
trained this way: static int8 (OpenVINO with NNCF) fits input ranges and smoothing
scales to calibration statistics of the weights being trained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ppocompress.compress.ops.quantize import dynamic_weight_max, int8_weight, replace_linears, replace_modules, uint8_input

TRAINED_INT8 = ("dynamic",)  # the runtimes' int8 kinds (Runtime.int8_kind) trained as served


class StraightThroughInt8Linear(nn.Module):
    """A Linear computed as dynamic int8 (SimulatedInt8Linear without statistics), whose
    gradients reach its float weight and bias unchanged. It holds the Linear's own
    parameters under the same names, so a state dict reads the same with it or without."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.most = dynamic_weight_max()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _straight_through(self.weight, int8_weight(self.weight.detach(), self.most))
        held = x.detach()
        return nn.functional.linear(_straight_through(x, uint8_input(held, held.min(), held.max())), weight, self.bias)


def _straight_through(value: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """`rounded` forward, the identity backward."""
    return value + (rounded - value).detach()


@contextlib.contextmanager
def served_as_int8(layers: list[nn.Module]) -> Iterator[None]:
    """Within the block, every nn.Linear inside `layers` computes as dynamic int8 and trains
    through it (StraightThroughInt8Linear); afterwards the Linears are back, their weights
    as trained (they are the same parameters)."""
    originals: dict[nn.Module, nn.Linear] = {}

    def served(linear: nn.Linear, _name: str) -> nn.Module:
        replacement = StraightThroughInt8Linear(linear)
        originals[replacement] = linear
        return replacement

    for layer in layers:
        replace_linears(layer, served)
    try:
        yield
    finally:
        for layer in layers:
            # one this block did not put there (an enclosing block's) stays for its own block to restore
            replace_modules(layer, StraightThroughInt8Linear, lambda replacement, _name: originals.get(replacement, replacement))
