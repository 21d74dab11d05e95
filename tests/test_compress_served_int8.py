"""Training as int8 serves (served_int8.py): the forward pass is the runtime's dynamic int8,
the backward pass the float layer's (straight-through), and the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ppocompress.compress.ops.quantize import SimulatedInt8Linear, uint8_input
from ppocompress.compress.recovery.served_int8 import StraightThroughInt8Linear, served_as_int8


@pytest.mark.parametrize("bias", [True, False])
def test_a_straight_through_linear_computes_as_dynamic_int8_and_passes_gradients_through(bias):
    torch.manual_seed(0)
    linear = nn.Linear(16, 8, bias=bias)
    x = torch.randn(4, 5, 16, requires_grad=True)
    simulated = SimulatedInt8Linear(linear)
    y = StraightThroughInt8Linear(linear)(x)
    assert torch.allclose(y, simulated(x.detach()), atol=1e-6)
    assert not torch.allclose(y, linear(x), atol=1e-4)  # int8 is not float
    upstream = torch.randn_like(y)
    y.backward(upstream)
    rounded_input = uint8_input(x.detach(), x.detach().min(), x.detach().max())
    expected = upstream.reshape(-1, 8).T @ rounded_input.reshape(-1, 16)  # a float Linear's, at the rounded input
    assert torch.allclose(linear.weight.grad, expected, atol=1e-5)
    if bias:
        assert torch.allclose(linear.bias.grad, upstream.reshape(-1, 8).sum(0), atol=1e-5)
    else:
        assert linear.bias is None and list(StraightThroughInt8Linear(linear).state_dict()) == ["weight"]
    assert torch.allclose(x.grad, upstream @ simulated.weight, atol=1e-5)  # through the rounded weights


def test_within_the_block_linears_are_served_as_int8_and_afterwards_are_back_with_the_same_parameters():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    untouched = nn.Linear(4, 4)
    keys, parameters = list(layer.state_dict()), list(layer.parameters())
    with served_as_int8([layer]):
        assert isinstance(layer[0], StraightThroughInt8Linear) and isinstance(layer[2][0], StraightThroughInt8Linear)
        assert list(layer.state_dict()) == keys and all(a is b for a, b in zip(layer.parameters(), parameters))
    assert type(layer[0]) is nn.Linear and type(layer[2][0]) is nn.Linear and type(untouched) is nn.Linear
    assert all(a is b for a, b in zip(layer.parameters(), parameters))
    with served_as_int8([]):  # nothing to serve in int8: nothing changes
        assert type(layer[0]) is nn.Linear
