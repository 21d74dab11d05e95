"""The runtimes: each exports a pruned model with int8 where its plan says, loads it and runs
it close to PyTorch fp32; OpenVINO's per-layer int8 goes through NNCF's ignored scope; the
search simulates static int8 as calibrated ranges; each runtime's weights_as_served_ gives a
layer the int8 that runtime computes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from compress_models import sample_batch
from ppocompress.compress import CompressionPlan, LayerPlan, Precision, apply_plan
from ppocompress.compress.models.families import adapter_for
from ppocompress.compress.ops import quantize
from ppocompress.compress.ops.quantize import (
    InputStatistics,
    SimulatedInt8Linear,
    WeightInt8Linear,
    is_packed_int8_linear,
)
from ppocompress.compress.runtimes import (
    RUNTIMES,
    available_runtimes,
    get_runtime,
    int8_layers,
)
from ppocompress.compress.runtimes.base import Runtime
from ppocompress.errors import UserError

CALIBRATION = [f"passage {i} about {w} and the way it shapes the day" for i, w in
               enumerate(["rain", "maps", "songs", "bread", "ships", "clocks", "trees", "coins"] * 4)]


def _reference(model) -> np.ndarray:
    batch = sample_batch(model.tokenizer)
    with torch.no_grad():
        out = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return (out.logits if model.is_causal else out.last_hidden_state).numpy()


def _run(runtime: Runtime, artifact, model) -> np.ndarray:
    batch = sample_batch(model.tokenizer)
    return runtime.session(artifact, threads=1)(batch["input_ids"].numpy(), batch["attention_mask"].numpy())


@pytest.mark.parametrize("name", list(RUNTIMES))
@pytest.mark.parametrize("family", ["bert", "mpnet", "llama"])
def test_every_runtime_runs_a_pruned_model_as_pytorch_does(tiny_model, tmp_path, name, family):
    dense = tiny_model(family)
    plan = CompressionPlan([LayerPlan(keep_groups=[0, 2]), LayerPlan(keep_neurons=list(range(20))), LayerPlan(drop=True)])
    pruned = apply_plan(dense, plan, quantize=False)
    runtime = get_runtime(name)
    artifact = runtime.export(pruned, tmp_path / name, CALIBRATION)
    got, expected = _run(runtime, artifact, pruned), _reference(pruned)
    assert got.shape == expected.shape
    # OpenVINO runs in bf16 where the CPU has it: 8 mantissa bits.
    tolerance = 0.05 if name == "openvino" else 1e-4
    assert np.abs(got - expected).max() <= tolerance * max(1.0, np.abs(expected).max())
    assert runtime.session(artifact).vocab_size == dense.model.config.vocab_size
    assert 0 < runtime.size_bytes(artifact)


@pytest.mark.parametrize("name", list(RUNTIMES))
@pytest.mark.parametrize("family", ["bert", "mpnet"])
def test_int8_in_the_planned_layers_shrinks_the_model_and_stays_close(tiny_model, tmp_path, name, family):
    dense = tiny_model(family)
    runtime = get_runtime(name)
    fp = runtime.export(dense, tmp_path / "fp", CALIBRATION)
    int8 = apply_plan(dense, CompressionPlan([LayerPlan(weights=Precision.INT8)] * 3), quantize=False)
    quantized = runtime.export(int8, tmp_path / "int8", CALIBRATION)
    assert runtime.size_bytes(quantized) < runtime.size_bytes(fp)
    got, expected = _run(runtime, quantized, dense), _reference(dense)
    cosine = (got * expected).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(expected, axis=-1))
    assert cosine.min() > 0.9


def test_openvino_counts_the_weights_not_the_graphs_description(tiny_model, tmp_path):
    runtime = get_runtime("openvino")
    artifact = runtime.export(tiny_model("bert"), tmp_path / "ov", CALIBRATION)
    assert runtime.size_bytes(artifact) == artifact.with_suffix(".bin").stat().st_size  # the .xml is not counted


def test_openvino_quantizes_only_the_planned_layers(tiny_model, tmp_path):
    """NNCF's ignored scope keeps every other layer's matrix products in floating point."""
    import openvino as ov

    dense = tiny_model("bert")
    plan = CompressionPlan([LayerPlan(), LayerPlan(weights=Precision.INT8), LayerPlan(drop=True)])
    model = apply_plan(dense, plan, quantize=False)
    assert int8_layers(model) == [1]
    artifact = get_runtime("openvino").export(model, tmp_path, CALIBRATION)
    graph = ov.Core().read_model(str(artifact))
    quantized = {op.get_friendly_name() for op in graph.get_ops() if op.get_type_name() == "FakeQuantize"}
    assert any("/encoder/layer.1/" in name for name in quantized)
    assert not any("/encoder/layer.0/attention/self/" in name or "/encoder/layer.0/intermediate/" in name for name in quantized)


def test_openvino_stores_float_layers_in_fp16_beside_int8_ones(tiny_model, tmp_path):
    """OpenVINO's save_model halves float weights only in a graph with none quantized, so
    the export converts them itself: a mixed plan's float layers cost the bytes priced."""
    import openvino as ov

    plan = CompressionPlan([LayerPlan(), LayerPlan(weights=Precision.INT8), LayerPlan()])
    artifact = get_runtime("openvino").export(apply_plan(tiny_model("bert"), plan, quantize=False), tmp_path, CALIBRATION)
    graph = ov.Core().read_model(str(artifact))
    matrices = [op.get_output_element_type(0).get_type_name() for op in graph.get_ops()
                if op.get_type_name() == "Constant" and len(shape := op.get_output_partial_shape(0)) == 2
                and shape[0].get_length() > 1 and shape[1].get_length() > 1]
    assert set(matrices) == {"f16", "i8"}


def test_static_int8_needs_calibration_text(tiny_model, tmp_path):
    int8 = apply_plan(tiny_model("bert"), CompressionPlan([LayerPlan(weights=Precision.INT8)] * 3), quantize=False)
    with pytest.raises(UserError, match="calibration text"):
        get_runtime("openvino").export(int8, tmp_path, [])


def test_a_runtime_that_is_not_installed_is_reported_in_one_line_and_skipped(monkeypatch):
    monkeypatch.setattr(RUNTIMES["openvino"], "package", "no_such_package_here")
    lines = []
    names = [r.name for r in available_runtimes(log=lines.append)]
    assert "openvino" not in names and "torch" in names
    assert lines == ["skipping runtime openvino: openvino is not installed (pip install openvino openvino-genai nncf)"]
    with pytest.raises(UserError, match="not installed"):
        RUNTIMES["openvino"].require()
    with pytest.raises(UserError, match="unknown runtime"):
        get_runtime("tensorflow")


@pytest.mark.parametrize("reduced, most", [(False, quantize.INT8_WEIGHT_MAX), (True, quantize.REDUCED_WEIGHT_MAX)])
def test_dynamic_simulation_rounds_weights_to_onnx_runtimes_grid(monkeypatch, reduced, most):
    """Dynamic (ONNX Runtime) weights lie on a symmetric grid of `most` steps a side, 7-bit
    where ONNX Runtime reduces the range on this processor; static (OpenVINO) ones keep 8 bits."""
    monkeypatch.setattr(quantize, "onnx_runtime_reduces_range", lambda: reduced)
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 8).requires_grad_(False)
    steps = SimulatedInt8Linear(linear).weight / (linear.weight.abs().amax(dim=1, keepdim=True) / most)
    assert torch.allclose(steps, steps.round(), atol=1e-4) and int(steps.abs().round().max()) == most
    x = torch.randn(20, 64)
    static = SimulatedInt8Linear(linear, InputStatistics(x.amin(dim=0), x.amax(dim=0), x))
    smoothed = linear.weight * static.smooth
    steps = static.weight / (smoothed.abs().amax(dim=1, keepdim=True) / quantize.INT8_WEIGHT_MAX)
    assert torch.allclose(steps, steps.round(), atol=1e-3) and int(steps.abs().round().max()) == quantize.INT8_WEIGHT_MAX


def test_static_simulation_smooths_and_fixes_the_input_range():
    """With calibration statistics the simulated Linear divides its input by the smoothing
    scale, quantizes it with the fixed calibrated range, and the product is unchanged when
    nothing is lost to rounding (int8-exact weights and inputs on the grid)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3).requires_grad_(False)
    x = torch.randn(50, 4) * torch.tensor([1.0, 10.0, 0.1, 3.0])
    statistics = InputStatistics(x.amin(dim=0), x.amax(dim=0), x)
    static = SimulatedInt8Linear(linear, statistics)
    assert static.smooth is not None and static.smooth.shape == (4,)
    low, high = static.input_range
    smoothed = x / static.smooth
    assert low == pytest.approx(float(smoothed.min()), rel=1e-6) and high == pytest.approx(float(smoothed.max()), rel=1e-6)
    assert torch.allclose(static(x), linear(x), atol=0.05 * float(linear(x).abs().max()))
    dynamic = SimulatedInt8Linear(linear)
    assert dynamic.smooth is None and dynamic.input_range is None
    # A value outside the calibrated range is clipped by the static one, not by the dynamic one.
    far = torch.full((1, 4), 1000.0)
    assert not torch.allclose(static(far), linear(far), rtol=0.1) and torch.allclose(dynamic(far), linear(far), rtol=0.1)


def _first_layer(loaded) -> tuple[nn.Module, dict[str, nn.Linear]]:
    """A copy of the model's first layer, and copies of its Linear layers by name."""
    layer = copy.deepcopy(adapter_for(loaded.model).layers(loaded.model)[0])
    return layer, {name: copy.deepcopy(m) for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


def _no_statistics(layer):
    raise AssertionError("a runtime that does not calibrate asked for input statistics")


@pytest.mark.parametrize("family, kind", [("bert", "dynamic"), ("llama", "weights only")])
def test_torch_serves_int8_with_its_own_kernels(tiny_model, family, kind):
    """Encoders get torch.ao's dynamic int8 Linear, causal LMs the int8-weight kernel."""
    loaded = tiny_model(family)
    layer, linears = _first_layer(loaded)
    get_runtime("torch").weights_as_served_(layer, Precision.INT8, loaded.model, _no_statistics)
    served = [layer.get_submodule(name) for name in linears]
    if kind == "dynamic":
        assert all(is_packed_int8_linear(m) for m in served)
    else:
        assert all(isinstance(m, WeightInt8Linear) for m in served)


def test_onnxruntime_serves_int8_as_dynamic_simulated_int8(tiny_model):
    """ONNX Runtime's int8 is simulated with each call's input range: no smoothing, no fixed range."""
    loaded = tiny_model("bert")
    layer, linears = _first_layer(loaded)
    get_runtime("onnxruntime").weights_as_served_(layer, Precision.INT8, loaded.model, _no_statistics)
    for name, linear in linears.items():
        served = layer.get_submodule(name)
        assert isinstance(served, SimulatedInt8Linear) and served.smooth is None and served.input_range is None
        assert torch.equal(served.weight, SimulatedInt8Linear(linear).weight)


def test_openvino_serves_int8_as_static_simulated_int8_with_the_given_statistics(tiny_model):
    """OpenVINO's int8 is simulated with the calibrated statistics it is given for this very
    layer: smoothed, with each Linear's fixed input range."""
    loaded = tiny_model("bert")
    layer, linears = _first_layer(loaded)
    generator = torch.Generator().manual_seed(0)
    statistics = {name: InputStatistics(-1 - torch.rand(m.in_features, generator=generator),
                                        1 + torch.rand(m.in_features, generator=generator),
                                        torch.zeros(1, m.in_features)) for name, m in linears.items()}
    asked = []

    def input_statistics(of_layer):
        asked.append(of_layer)
        return statistics

    get_runtime("openvino").weights_as_served_(layer, Precision.INT8, loaded.model, input_statistics)
    assert asked == [layer]
    for name, linear in linears.items():
        served, expected = layer.get_submodule(name), SimulatedInt8Linear(linear, statistics[name])
        assert isinstance(served, SimulatedInt8Linear) and served.input_range == expected.input_range
        assert torch.equal(served.smooth, expected.smooth) and torch.equal(served.weight, expected.weight)
