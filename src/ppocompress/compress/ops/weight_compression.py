"""An LLM's weight-only compression as NNCF computes it, in float, so that a search prices
each precision as delivery compresses it: int8 asymmetric per output channel, int4
asymmetric per group of inputs (data-free rounding, or fitted to calibration
activations).

NNCF's data-aware int4 sees each Linear's input through one statistic: per calibration
passage, the mean input over its tokens (a [channels, passages] matrix X). Two steps use it:

- AWQ, on the FFN's output projection only (the one weight behind a product of two
  branches, where a per-input-channel scale folds into the branch before it): in the
  groups holding the top AWQ_OUTLIER_SHARE of input channels by max|X|, inputs are
  divided and weights multiplied by max|X|**alpha, alpha chosen on a grid to best keep
  the group's outputs on X. The scale is exact in float; only the rounding changes.
- scale estimation, on every int4 weight: each group's scale (its zero point fixed) is
  re-estimated as an importance-weighted ratio of weights to their integer codes, first
  iteratively and then from shrunk min-max scales, keeping per group whichever keeps the
  outputs on X best.

NNCF also clamps an AWQ scale that could overflow fp16 in the folded weight; the
simulation leaves that out (the clamp is for activations near 65504).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ppocompress.compress.ops.quantize import InputStatistics, replace_linears

INT4_GROUP_SIZE = 64  # inputs per int4 scale
MIN_INT4_GROUP_SIZE = 8  # smaller groups than this and the layer stays in floating point
INT4_BITS = 4
INT4_SIMULATION = "awq+scale-estimation"  # names how int4 is simulated, in a search's identity
AWQ_PASSAGES = 64  # calibration passages the statistics are taken on (NNCF's subset_size)
AWQ_OUTLIER_SHARE = 0.002  # share of input channels whose groups AWQ rescales
AWQ_ALPHAS = 100  # grid steps of the AWQ exponent over [0, 1)
SCALE_ITERATIONS = 5  # iterative re-estimations of each group's scale
SCALE_SHRINKS = 10  # min-max scales shrunk by 0, 5, ... 45 % and re-estimated
_ZERO_CODE = 1e-3  # stands for a code of 0 in weight / code, as NNCF's estimate does


def int4_group_size(width: int) -> int | None:
    """The group an int4 weight of `width` inputs is compressed in, as NNCF adjusts it:
    INT4_GROUP_SIZE where it divides the width, else the largest power of two that does
    (None below MIN_INT4_GROUP_SIZE: not compressed)."""
    if width % INT4_GROUP_SIZE == 0:
        return INT4_GROUP_SIZE
    power = width & -width
    return power if power >= MIN_INT4_GROUP_SIZE else None


def asymmetric_weights(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """`weight` rounded as NNCF's data-free asymmetric weight compression stores it: per
    output channel (group_size None) or per group of `group_size` inputs, the range
    [min, max] mapped onto 2**bits levels with an integer zero point."""
    return asymmetric_grid(weight, bits, group_size)[0].to(weight.dtype)


def asymmetric_grid(weight: torch.Tensor, bits: int, group_size: int | None = None):
    """asymmetric_weights' rounding in float32, with its grid: the rounded weight [rows,
    columns], and each group's scale and zero point [rows, groups, 1]."""
    rows, columns = weight.shape
    group = columns if group_size is None else group_size
    if columns % group:
        raise ValueError(f"a group of {group} inputs does not divide a width of {columns}")
    grouped = weight.detach().float().reshape(rows, columns // group, group)
    low = grouped.amin(dim=-1, keepdim=True).clamp(max=0.0)
    high = grouped.amax(dim=-1, keepdim=True).clamp(min=0.0)
    levels = 2 ** bits - 1
    scale = ((high - low) / levels).clamp(min=1e-12)
    zero_point = torch.round(-low / scale).clamp(0, levels)
    quantized = (torch.round(grouped / scale) + zero_point).clamp(0, levels)
    return ((quantized - zero_point) * scale).reshape(rows, columns), scale, zero_point


def simulate_weight_compression_(module: nn.Module, bits: int, statistics: dict[str, InputStatistics] | None = None,
                                  awq: frozenset[str] = frozenset()) -> nn.Module:
    """Every Linear inside `module` with its weights as NNCF compresses them, in place:
    8 bits per output channel, or 4 bits in groups of int4_group_size, fitted to
    `statistics` (keyed by the Linear's name inside `module`; AWQ on the names in `awq`)
    where given, else rounded data-free; inputs stay in floating point, as weight-only
    compression serves them."""
    def compressed(linear: nn.Linear, name: str) -> nn.Linear:
        if bits == 8:
            linear.weight.data = asymmetric_weights(linear.weight, 8)
        elif (group := int4_group_size(linear.in_features)) is not None:
            seen = None if statistics is None else statistics.get(name)
            if seen is None:
                linear.weight.data = asymmetric_weights(linear.weight, 4, group)
            else:
                linear.weight.data = _fitted(linear.weight, group, seen, name in awq).to(linear.weight.dtype)
        return linear

    return replace_linears(module, compressed)


def _fitted(weight: torch.Tensor, group: int, seen: InputStatistics, awq: bool) -> torch.Tensor:
    """data_aware_int4 of `weight` on `seen`'s inputs, with what was fitted before on the
    same inputs taken from `seen.fitted`: the whole weight under AWQ (whose scale all rows
    share), else row by row (scale estimation treats each output row alone)."""
    # The cache outlives the call, in or out of inference mode, whose tensors do not mix
    # with others: it keeps ordinary tensors, and hands out new ones made in the caller's mode.
    with torch.inference_mode(False), torch.no_grad():
        weight = weight.detach().float().clone()
        means = seen.means.clone()
        keys = [(group, "awq", _digest(weight))] if awq else [(group, "rows", _digest(row)) for row in weight]
        missing = [i for i, key in enumerate(keys) if key not in seen.fitted]
        if awq and missing:
            seen.fitted[keys[0]] = data_aware_int4(weight, group, means, awq=True)
        elif missing:
            for i, row in zip(missing, estimated_int4(weight[missing], group, means.T)):
                seen.fitted[keys[i]] = row
    return seen.fitted[keys[0]].clone() if awq else torch.stack([seen.fitted[key] for key in keys])


def _digest(values: torch.Tensor) -> bytes:
    return hashlib.blake2b(values.contiguous().numpy().tobytes(), digest_size=16).digest()


def data_aware_int4(weight: torch.Tensor, group: int, means: torch.Tensor, awq: bool = False) -> torch.Tensor:
    """`weight` [out, in] as delivered in asymmetric int4 with groups of `group` inputs,
    dequantized to float: AWQ first when `awq`, then scale estimation, both fitted to
    `means` [passages, in], each passage's mean input."""
    weight = weight.detach().float()
    x = means.detach().float().T  # [in, passages], NNCF's layout
    scale = awq_scale(weight, group, x) if awq else None
    if scale is not None:
        weight, x = weight * scale, x / scale[:, None]
    fitted = estimated_int4(weight, group, x)
    return fitted if scale is None else fitted / scale


def awq_scale(weight: torch.Tensor, group: int, x: torch.Tensor) -> torch.Tensor | None:
    """Per input channel, the AWQ scale s (weights times s, inputs divided by s); None when
    no group gains from one."""
    magnitude = x.abs().amax(dim=1)
    top = max(int(magnitude.numel() * AWQ_OUTLIER_SHARE), 1)
    scale = torch.ones_like(magnitude)
    for start in sorted({int(i) // group * group for i in torch.argsort(-magnitude)[:top]}):
        columns = slice(start, start + group)
        g_scale = magnitude[columns].clamp(min=float(torch.quantile(magnitude[columns], 0.1)), max=100.0)
        g_weight, g_x = weight[:, columns], x[columns]
        dense = g_weight @ g_x
        best = dense.abs().max()
        for step in range(AWQ_ALPHAS):
            candidate = g_scale ** (step / AWQ_ALPHAS)
            rounded, _, _ = asymmetric_grid(g_weight * candidate, INT4_BITS, group)
            error = (rounded @ (g_x / candidate[:, None]) - dense).abs().mean()
            if error < best:
                best, scale[columns] = error, candidate
    return None if bool((scale == 1).all()) else scale


def estimated_int4(weight: torch.Tensor, group: int, x: torch.Tensor) -> torch.Tensor:
    """`weight` in asymmetric int4, each group's scale estimated on inputs `x` [in, passages]
    (NNCF's scale estimation), dequantized."""
    rows, columns = weight.shape
    groups = columns // group
    rounded, scale, zero_point = asymmetric_grid(weight, INT4_BITS, group)  # scale, zero point [rows, groups, 1]
    w = weight.reshape(rows, groups, group)
    xg = x.reshape(groups, group, -1)
    dense = torch.einsum("rgi,gin->rgn", w, xg)

    def output_error(candidate: torch.Tensor) -> torch.Tensor:
        return (torch.einsum("rgi,gin->rgn", candidate, xg) - dense).pow(2).mean(dim=-1)  # [rows, groups]

    def codes(with_scale: torch.Tensor) -> torch.Tensor:
        return (torch.round(w / with_scale) + zero_point).clamp(0, 2 ** INT4_BITS - 1) - zero_point

    code = codes(scale)
    # A weight's importance is its input's largest magnitude, none where min-max rounding
    # gives it code 0; it sums to 1 in each group.
    importance = torch.where(code == 0, 0.0, x.abs().amax(dim=1).reshape(1, groups, group).expand_as(w))
    importance = importance / (importance.sum(dim=-1, keepdim=True) + torch.finfo(w.dtype).eps)

    def estimate(code: torch.Tensor) -> torch.Tensor:
        """Each group's scale as the importance-weighted mean of |w| / |code|."""
        return (w.abs() / (code.abs() + _ZERO_CODE * (code == 0)) * importance).sum(dim=-1, keepdim=True)

    best_scale, best = scale, output_error(rounded.reshape(rows, groups, group))
    for step in range(SCALE_ITERATIONS + SCALE_SHRINKS):
        if step >= SCALE_ITERATIONS:  # from a shrunk min-max scale
            code = codes(scale * (1.0 - 0.05 * (step - SCALE_ITERATIONS)))
        candidate = estimate(code)
        error = output_error(codes(candidate) * candidate)
        better = error < best
        best = torch.where(better, error, best)
        best_scale = torch.where(better[..., None], candidate, best_scale)
        if step < SCALE_ITERATIONS - 1:
            code = codes(best_scale)
    return (codes(best_scale) * best_scale).reshape(rows, columns)
