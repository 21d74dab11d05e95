"""The warnings a delivery carries into result.json and the summary."""

from __future__ import annotations

from types import SimpleNamespace

from ppocompress.compress.timing import LatencyResult
from ppocompress.search.deliver import target_warnings


def _latency(p10: float, p90: float) -> LatencyResult:
    return LatencyResult("onnxruntime", p10, p10, (p10 + p90) / 2, p90, 30)


def _result(speedup: float, vs_int8: float, reference: LatencyResult, delivered: LatencyResult):
    model = SimpleNamespace(speedup=speedup, speedup_vs_dense_int8=vs_int8, predicted_speedup=5.06, latency=delivered)
    return SimpleNamespace(delivered=model, target_kind="speedup", target_value=5.0, runtime="onnxruntime",
                           reference_latency=reference)


def test_a_quiet_run_that_meets_its_target_has_no_warning():
    assert target_warnings(_result(5.1, 1.9, _latency(345, 360), _latency(68, 70))) == []


def test_a_busy_machine_is_named_with_the_spread_it_caused():
    warnings = target_warnings(_result(5.1, 1.9, _latency(556, 1557), _latency(68, 70)))
    assert len(warnings) == 1 and "dense PyTorch fp32 556 to 1557 ms" in warnings[0] and "the machine was busy" in warnings[0]
    assert "delivered" not in warnings[0]


def test_a_short_target_and_a_delivery_slower_than_int8_are_both_named():
    warnings = target_warnings(_result(3.0, 0.9, _latency(345, 350), _latency(115, 117)))
    assert len(warnings) == 2
    assert warnings[0].startswith("measured 3.00x against dense PyTorch fp32, short of the 5x target by 40%")
    assert "slower than the dense int8 model on onnxruntime (0.90x)" in warnings[1]
