"""int8 Linear layers in PyTorch, with per-channel weight scales, and the simulation of
other runtimes' int8 that a search scores plans with.

Two PyTorch forms, one per kind of model:
- encoders: dynamic int8 (int8 weights and activations, torch.ao's kernels), the fastest
  for batches of sentences;
- causal LMs: int8 weights only, activations kept in float. Decoding one token at a time
  reads every weight once, so a quarter of the bytes read is the speedup, while int8
  activations destroy a Llama's quality: its outlier channels fit no per-tensor
  activation scale.

Per-channel weight scales are the default because per-tensor ones lose quality and gain
no speed.
"""

from __future__ import annotations

import functools
import platform
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

try:  # torch keeps the eager dynamic-quantization kernels under torch.ao
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
except ImportError:  # pragma: no cover - depends on the torch build
    DynamicInt8Linear = None

INT8_WEIGHT_MAX = 127  # symmetric int8 weights: [-127, 127]
REDUCED_WEIGHT_MAX = 64  # ONNX Runtime's reduce_range for int8 weights: [-64, 64]


def quantize_int8_(module: nn.Module) -> nn.Module:
    """Replaces every nn.Linear inside module by a dynamic int8 Linear, in place."""
    if DynamicInt8Linear is None:  # pragma: no cover
        raise RuntimeError("this torch build has no dynamic int8 kernels (torch.ao.quantization)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao prints deprecation notices on every call
        quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return module


# torch's int8-weight kernel reads the inner dimension in blocks of 16 and is not to be
# trusted with other widths, so the inner dimension is padded with zero columns.
_KERNEL_BLOCK = 16


class WeightInt8Linear(nn.Module):
    """y = x W^T + b with W held as int8 rows times a scale per row (symmetric), multiplied
    by torch's int8-weight kernel without materialising W in float. The kernel is fast
    for bfloat16 inputs only, so the product is taken in bfloat16 and returned in the
    input's dtype."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / INT8_WEIGHT_MAX).clamp(min=1e-12)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.padding = -self.in_features % _KERNEL_BLOCK
        values = torch.round(weight / scale[:, None]).clamp(-INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).to(torch.int8)
        self.register_buffer("weight_int8", nn.functional.pad(values, (0, self.padding)).contiguous())
        self.register_buffer("weight_scale", scale.to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def weight(self) -> torch.Tensor:
        """The int8 values, [out, in]: a method, as on torch.ao's int8 Linear."""
        return self.weight_int8[:, : self.in_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.padding:
            flat = nn.functional.pad(flat, (0, self.padding))
        y = torch._weight_int8pack_mm(flat.contiguous(), self.weight_int8, self.weight_scale).to(x.dtype)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def quantize_weights_int8_(module: nn.Module) -> nn.Module:
    """Replaces every nn.Linear inside module (or module itself) by a WeightInt8Linear, in place."""
    return replace_linears(module, lambda linear, _name: WeightInt8Linear(linear))


def torch_int8_(module: nn.Module, weights_only: bool) -> nn.Module:
    """PyTorch's int8 for a model kind: weights only (causal LMs) or dynamic (encoders)."""
    return quantize_weights_int8_(module) if weights_only else quantize_int8_(module)


def is_int8_linear(module: nn.Module) -> bool:
    return is_packed_int8_linear(module) or isinstance(module, WeightInt8Linear)


def is_packed_int8_linear(module: nn.Module) -> bool:
    """torch.ao's dynamic int8 Linear, whose packed weight safetensors cannot hold as is."""
    return DynamicInt8Linear is not None and isinstance(module, DynamicInt8Linear)


def int8_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The plain tensors that describe an int8 Linear (safetensors cannot hold packed ones)."""
    weight = module.weight()
    tensors = {
        "weight_int8": weight.int_repr(),
        "weight_scale": weight.q_per_channel_scales().to(torch.float64),
        "weight_zero_point": weight.q_per_channel_zero_points().to(torch.int64),
    }
    bias = module.bias()
    if bias is not None:
        tensors["bias"] = bias.detach()
    return tensors


def load_int8_tensors(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of int8_tensors: sets the packed weight of an int8 Linear."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        weight = torch._make_per_channel_quantized_tensor(
            tensors["weight_int8"], tensors["weight_scale"], tensors["weight_zero_point"], 0
        )
        module.set_weight_bias(weight, tensors.get("bias"))


# NNCF's static int8 for transformers first moves activation outliers into the weights
# (SmoothQuant): per input channel, s = max|x|^alpha / max|w|^(1 - alpha), clipped to
# [the 10th percentile of s, 100]; x / s and w * s are then quantized. Its defaults:
SMOOTH_QUANT_ALPHA = 0.95
SMOOTH_QUANT_SCALE_QUANTILE = 0.1
SMOOTH_QUANT_SCALE_MAX = 100.0
_STATISTIC_FLOOR = 1e-5


@dataclass
class InputStatistics:
    """What a Linear saw as input on calibration text: per channel the lowest and highest
    value (static int8's ranges), and per passage the mean over its tokens, [passages,
    channels] (the one statistic NNCF's data-aware int4 fits weights to)."""

    low: torch.Tensor
    high: torch.Tensor
    means: torch.Tensor
    # Weights (or rows) already compressed to fit these inputs, by group size, kind and a
    # digest of their values: a search compresses a layer at many pruning levels, most of
    # whose projections keep the same weights or a subset of the same rows on the same inputs.
    fitted: dict[tuple[int, str, bytes], torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def columns(self, kept: torch.Tensor) -> "InputStatistics":
        """The statistics of the input channels `kept`, as a pruned Linear sees them."""
        return InputStatistics(self.low[kept], self.high[kept], self.means[:, kept])


@functools.cache
def onnx_runtime_reduces_range() -> bool:
    """Whether ONNX Runtime's dynamic int8 needs 7-bit weights on this processor. On x86
    without VNNI its uint8 x int8 kernels add pairs of products in 16 bits, which
    saturate with 8-bit weights (2 x 255 x 127 > 32767): the int8 output then strays
    from exact int8 arithmetic in a way no simulation fast enough for a search
    reproduces. ONNX Runtime's remedy is reduce_range (weights in [-64, 64]: 2 x 255 x 64
    fits), which a simulation prices exactly, at a small cost in quality. Elsewhere
    (VNNI, ARM) products add in 32 bits."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        return True  # unknown x86: 7 bits cannot saturate
    return not ({"avx512_vnni", "avx_vnni"} & set(flags))


class SimulatedInt8Linear(nn.Module):
    """A Linear computed as an int8 runtime computes it, in float: weights per-channel
    symmetric int8; inputs per-tensor asymmetric uint8, either with the range of each
    call's input (dynamic: ONNX Runtime's DynamicQuantizeLinear) or, given calibration
    statistics, smoothed and with a fixed range (static: OpenVINO with NNCF, see above).
    PyTorch's own int8 kernels use 7-bit inputs and lose more quality, so this is how a
    search prices int8 for a model that will run on another runtime. Dynamic weights take
    ONNX Runtime's range on this processor (see onnx_runtime_reduces_range)."""

    def __init__(self, linear: nn.Linear, statistics: InputStatistics | None = None):
        super().__init__()
        weight = linear.weight.detach().float()
        self.input_range: tuple[float, float] | None = None  # None: dynamic
        self.register_buffer("smooth", None)
        if statistics is not None:
            activation = torch.maximum(statistics.low.abs(), statistics.high.abs()).clamp(min=_STATISTIC_FLOOR)
            columns = weight.abs().amax(dim=0).clamp(min=_STATISTIC_FLOOR)
            smooth = activation ** SMOOTH_QUANT_ALPHA / columns ** (1 - SMOOTH_QUANT_ALPHA)
            smooth = smooth.clamp(min=float(torch.quantile(smooth, SMOOTH_QUANT_SCALE_QUANTILE)), max=SMOOTH_QUANT_SCALE_MAX)
            self.smooth = smooth
            weight = weight * smooth
            self.input_range = (float((statistics.low / smooth).min()), float((statistics.high / smooth).max()))
        most = dynamic_weight_max() if statistics is None else INT8_WEIGHT_MAX
        self.register_buffer("weight", int8_weight(weight, most))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        if self.input_range is None:
            low, high = x.min(), x.max()
        else:
            low, high = (torch.tensor(v, dtype=x.dtype) for v in self.input_range)
        return nn.functional.linear(uint8_input(x, low, high), self.weight, self.bias)


def dynamic_weight_max() -> int:
    """The largest int8 weight ONNX Runtime's dynamic int8 uses on this processor."""
    return REDUCED_WEIGHT_MAX if onnx_runtime_reduces_range() else INT8_WEIGHT_MAX


def int8_weight(weight: torch.Tensor, most: int) -> torch.Tensor:
    """`weight` [out, in] in symmetric int8 with a scale per output channel (values in
    [-most, most]), back in float."""
    scale = (weight.abs().amax(dim=1, keepdim=True) / most).clamp(min=1e-12)
    return torch.round(weight / scale).clamp(-most, most) * scale


def uint8_input(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """`x` in asymmetric uint8 over the range [low, high] widened to hold 0, back in float."""
    low, high = low.clamp(max=0.0), high.clamp(min=0.0)
    scale = ((high - low) / 255.0).clamp(min=1e-12)
    zero_point = torch.round(-low / scale).clamp(0, 255)
    return ((torch.round(x / scale) + zero_point).clamp(0, 255) - zero_point) * scale


def simulate_int8_(module: nn.Module, statistics: dict[str, InputStatistics] | None = None) -> nn.Module:
    """Replaces every nn.Linear inside module by a SimulatedInt8Linear, in place: static
    with calibration `statistics` (keyed by the Linear's name inside module), else dynamic."""
    def simulated(linear: nn.Linear, name: str) -> SimulatedInt8Linear:
        return SimulatedInt8Linear(linear, None if statistics is None else statistics[name])

    return replace_linears(module, simulated)


def replace_linears(module: nn.Module, make) -> nn.Module:
    """Every nn.Linear inside `module` replaced by make(linear, its name inside module); a
    Linear `module` itself is returned replaced."""
    return replace_modules(module, nn.Linear, make)


def replace_modules(module: nn.Module, kind: type[nn.Module], make) -> nn.Module:
    """Every module of type `kind` inside `module` replaced by make(it, its name inside
    module); a `module` of that type itself is returned replaced."""
    if isinstance(module, kind):
        return make(module, "")
    for name, child in list(module.named_modules()):
        if isinstance(child, kind):
            parent_name, _, attribute = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attribute, make(child, name))
    return module
