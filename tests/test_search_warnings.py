"""The warnings a delivery carries into result.json and the summary."""

from __future__ import annotations

from types import SimpleNamespace

from ppocompress.compress.measure.timing import (
    LatencyResult,
    speedups_over_rounds,
    summarise,
)
from ppocompress.search.deliver import target_warnings
from ppocompress.search.results import FloorProbe, QualityFloor


def _latency(p10: float, p90: float) -> LatencyResult:
    return LatencyResult("onnxruntime", p10, p10, (p10 + p90) / 2, p90, 30)


def _result(speedup: float, vs_int8: float, reference: LatencyResult, delivered: LatencyResult, rounds=None,
            alternatives=None, target=("speedup", 5.0), size_bytes=100, floor=None):
    rounds = rounds or [speedup]
    model = SimpleNamespace(speedup=speedup, speedup_vs_dense_int8=vs_int8, predicted_speedup=5.06, latency=delivered,
                            speedup_range=lambda: (min(rounds), max(rounds)), fidelity=0.95, size_bytes=size_bytes)
    return SimpleNamespace(delivered=model, target_kind=target[0], target_value=target[1], runtime="onnxruntime",
                           reference_latency=reference, alternatives=alternatives or {}, fidelity_short_name="exp(-KL)",
                           dense_size_bytes=500, floor=floor)


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


def test_a_target_against_dense_int8_is_checked_against_the_dense_int8_model():
    met = _result(3.0, 1.42, _latency(345, 350), _latency(115, 117), target=("int8-speedup", 1.4))
    assert target_warnings(met) == []
    short = target_warnings(_result(5.1, 1.2, _latency(345, 350), _latency(68, 70), target=("int8-speedup", 1.4)))
    assert short == ["measured 1.20x against the dense int8 model on onnxruntime, short of the 1.4x target by 14%"]


def test_a_speedup_that_moves_from_round_to_round_is_a_busy_machine_too():
    """Each target's own timings can be steady while the load changes between rounds."""
    warnings = target_warnings(_result(5.1, 1.9, _latency(345, 360), _latency(68, 70), rounds=[5.1, 3.9, 5.3]))
    assert len(warnings) == 1 and "the delivered speedup 3.90x to 5.30x from round to round" in warnings[0]


def test_a_round_by_round_speedup_pairs_the_rounds_of_the_reference_and_the_model():
    reference = summarise([[100.0, 101.0], [200.0, 202.0], [100.0, 100.0]], "torch", "median")
    model = summarise([[20.0, 20.0], [50.0, 50.0], [25.0, 25.0]], "onnxruntime", "median")
    assert reference.round_ms == [100.5, 201.0, 100.0]
    assert speedups_over_rounds(reference, model) == [100.5 / 20.0, 201.0 / 50.0, 100.0 / 25.0]


def test_an_alternative_as_fast_and_better_is_named_one_slower_or_worse_is_not():
    better = SimpleNamespace(speedup=5.0, fidelity=0.97)
    slower = SimpleNamespace(speedup=4.0, fidelity=0.99)
    worse = SimpleNamespace(speedup=6.0, fidelity=0.90)
    alternatives = {"nncf mixed": better, "dense int8": slower, "dense int4": worse}
    warnings = target_warnings(_result(5.1, 1.9, _latency(345, 360), _latency(68, 70), alternatives=alternatives))
    assert len(warnings) == 1
    assert warnings[0].startswith("nncf mixed is as fast (5.00x) and keeps more quality than the delivered model "
                                  "(exp(-KL) 0.9700 against 0.9500)")


def test_a_size_target_is_checked_against_the_measured_bytes_and_alternatives_by_theirs():
    """A size target asks for bytes, not speed: a delivery slower than dense int8 is no warning."""
    met = _result(2.0, 0.9, _latency(345, 350), _latency(115, 117), target=("size", 0.2), size_bytes=100)
    assert target_warnings(met) == []
    large = target_warnings(_result(2.0, 0.9, _latency(345, 350), _latency(115, 117), target=("size", 0.2), size_bytes=110))
    assert large == ["measured size 0.220 of dense PyTorch fp32's, above the size 0.2 target by 10%"]
    smaller = SimpleNamespace(speedup=1.0, fidelity=0.97, size_bytes=98)
    larger = SimpleNamespace(speedup=9.0, fidelity=0.99, size_bytes=140)
    warnings = target_warnings(_result(2.0, 0.9, _latency(345, 350), _latency(115, 117), target=("size", 0.2),
                                       alternatives={"nncf mixed": smaller, "dense int8": larger}))
    assert len(warnings) == 1 and warnings[0].startswith("nncf mixed is as small (0.0 MB) and keeps more quality")


def test_a_floor_no_plan_met_is_said_plainly_and_its_targets_are_not_held_against_dense_int8():
    floor = QualityFloor(0.99, [FloorProbe("2x int8", 0.91, "lsq"), FloorProbe("1.25x int8", 0.96, "lsq"),
                                FloorProbe("1.25x int8", 0.97, "lsq+distill")], None)
    warnings = target_warnings(_result(4.0, 1.0, _latency(345, 350), _latency(86, 87), target=("int8-speedup", 1.25),
                                       floor=floor))
    assert warnings == ["no target's plan keeps exp(-KL) 0.99 on validation text (the best, at 1.25x int8 by "
                        "lsq+distill: 0.9700); the dense int8 model is delivered (0.9500), which falls below it too; "
                        "ask for a lower floor"]
    unprobed = QualityFloor(0.99, [], None, {"2x int8": 0.8, "1.25x int8": 0.9})  # recovery none: no second try
    warnings = target_warnings(_result(4.0, 1.0, _latency(345, 350), _latency(86, 87), target=("int8-speedup", 1.25),
                                       floor=unprobed))
    assert warnings[0].startswith("no target's plan keeps exp(-KL) 0.99 on validation text (none came near it in the "
                                  "search); the dense int8 model is delivered (0.9500)")


def test_a_floor_met_on_validation_text_but_not_on_held_out_text_is_flagged():
    floor = QualityFloor(0.94, [FloorProbe("2x int8", 0.93, "lsq"), FloorProbe("2x int8", 0.97, "lsq+distill")], "2x int8")
    met = _result(8.0, 2.0, _latency(345, 350), _latency(43, 44), target=("int8-speedup", 2.0), floor=floor)
    assert target_warnings(met) == []  # held-out 0.95 >= 0.94
    floor.min_quality = 0.955
    assert target_warnings(met) == ["held-out exp(-KL) 0.9500 is below the 0.955 floor that validation text met "
                                    "(0.9700); ask for a higher floor to keep a margin"]
