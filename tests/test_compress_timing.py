"""Latency measured in worker processes, side by side, under one TimingSetup."""

from __future__ import annotations

import onnx
import pytest

from compress_models import save_tiny_model
from ppocompress.compress.files.onnx_export import export_onnx
from ppocompress.compress.files.saved import save
from ppocompress.compress.measure import timing
from ppocompress.compress.measure.timing import (
    LatencyResult,
    TimingSetup,
    measure_latencies,
    run_worker,
)
from ppocompress.compress.models.loading import load_model
from ppocompress.compress.ops.apply import apply_plan
from ppocompress.compress.plan import CompressionPlan, LayerPlan, Precision
from ppocompress.errors import UserError

SMALL = TimingSetup(batch_size=4, seq_len=16, rounds=1, repeats=3, warmup=1)


@pytest.fixture(scope="module")
def tiny_targets(tmp_path_factory):
    """A tiny saved BERT directory and its ONNX export."""
    directory = save_tiny_model("bert", tmp_path_factory.mktemp("bert"))
    loaded = load_model(str(directory))
    return directory, export_onnx(loaded.model, loaded.tokenizer, directory.parent / "bert.onnx")


def test_workers_time_torch_and_onnxruntime_targets(tiny_targets):
    directory, onnx_path = tiny_targets
    results = measure_latencies([("torch", directory, "torch"), ("ort", onnx_path, "onnxruntime")], SMALL)
    for label, runtime in (("torch", "torch"), ("ort", "onnxruntime")):
        result = results[label]
        assert result.runtime == runtime and result.timings == 3
        assert 0 < result.p10_ms <= result.median_ms <= result.p90_ms and result.ms == result.p10_ms


def test_a_compressed_directory_with_compression_json_is_timed(tmp_path, tiny_targets):
    directory, _ = tiny_targets
    plan = CompressionPlan([LayerPlan(weights=Precision.INT8), LayerPlan(keep_groups=[0, 1]), LayerPlan(drop=True)])
    compressed = save(apply_plan(load_model(str(directory)), plan), tmp_path / "compressed")
    assert len(run_worker(compressed, "torch", SMALL)["times_ms"]) == SMALL.repeats


def test_bad_latency_targets_raise_user_error(tmp_path, tiny_targets):
    directory, onnx_path = tiny_targets
    with pytest.raises(UserError, match="is not a model directory"):
        measure_latencies([("a", tmp_path / "missing", "torch")], SMALL)
    with pytest.raises(UserError, match="is not a model directory"):
        measure_latencies([("a", onnx_path, "torch")], SMALL)
    with pytest.raises(UserError, match="is not an .onnx file"):
        measure_latencies([("a", directory, "onnxruntime")], SMALL)
    with pytest.raises(UserError, match="is not an OpenVINO IR"):
        measure_latencies([("a", onnx_path, "openvino")], SMALL)
    with pytest.raises(UserError, match="unknown runtime"):
        measure_latencies([("a", directory, "tensorflow")], SMALL)


def test_a_worker_user_error_comes_back_as_user_error_with_its_message(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        run_worker(tmp_path / "empty", "torch", SMALL)
    ids = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "seq"])
    out = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.INT64, ["batch", "seq"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input_ids"], ["out"])], "foreign", [ids], [out])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(UserError, match="has no vocab_size metadata"):
        run_worker(tmp_path / "foreign.onnx", "onnxruntime", SMALL)


def test_a_worker_crash_raises_runtime_error_with_its_last_stderr_line(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not protobuf")
    with pytest.raises(RuntimeError, match=r"latency worker for .*broken.onnx \(onnxruntime\) failed: .+"):
        run_worker(broken, "onnxruntime", SMALL)


def test_measure_latencies_interleaves_rounds_and_pools_their_timings(monkeypatch, tiny_targets):
    directory, onnx_path = tiny_targets
    calls = []

    def fake_worker(path, runtime, setup, seed=0):
        calls.append(runtime)
        return {"times_ms": [10.0 * len(calls)] * 2}  # 2 timings per round

    monkeypatch.setattr(timing, "run_worker", fake_worker)
    setup = TimingSetup(rounds=3, statistic="median")
    results = measure_latencies([("a", directory, "torch"), ("b", onnx_path, "onnxruntime")], setup)
    assert calls == ["torch", "onnxruntime"] * 3
    assert isinstance(results["a"], LatencyResult) and results["a"].timings == 6
    assert results["a"].median_ms == 30.0 and results["b"].median_ms == 40.0  # medians over rounds 1, 3, 5 / 2, 4, 6
    assert results["a"].ms == results["a"].median_ms and results["a"].p10_ms == 10.0


def test_measure_latencies_rejects_duplicate_labels(tiny_targets):
    directory, _ = tiny_targets
    with pytest.raises(UserError, match="unique"):
        measure_latencies([("a", directory, "torch"), ("a", directory, "torch")], SMALL)


@pytest.mark.parametrize("field, value", [("threads", 0), ("batch_size", -1), ("rounds", 0), ("statistic", "mean")])
def test_a_bad_timing_setup_is_a_user_error(field, value):
    with pytest.raises(UserError):
        TimingSetup(**{field: value})
