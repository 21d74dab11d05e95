"""The duration a run announces before it starts."""

from __future__ import annotations

import pytest

from ppocompress.search.estimate import ENCODER, estimate

SEARCHERS = ["ppo", "uniform", "random", "evolutionary", "estimate"]


def _phases(**options) -> dict[str, float]:
    return estimate(ENCODER.importance_s, SEARCHERS, 200, 40, 0, table_cached=True, dense_timed=True, measured=True,
                    **options).phases


def test_a_target_set_delivers_every_target_and_a_floor_probes_them_and_delivers_one():
    one = _phases()
    family = _phases(targets=5)
    floor = _phases(targets=5, floor=True)
    assert family["delivery"] == pytest.approx(5 * one["delivery"]) and family["floor"] == 0
    assert floor["delivery"] == pytest.approx(one["delivery"])
    assert floor["floor"] == pytest.approx(5 * ENCODER.delivery_per_plan_s)  # each target probed at most once


def test_distillation_counts_each_recovered_plan_the_floor_s_probes_among_them():
    assert _phases(distill_minutes=2.0)["distillation"] == pytest.approx(2 * 60 * len(SEARCHERS))
    assert _phases(distill_minutes=2.0, targets=5, floor=True)["distillation"] == pytest.approx(2 * 60 * (5 + len(SEARCHERS)))


def test_a_floor_s_distillations_where_least_squares_falls_short_are_counted_at_most():
    assert _phases(targets=5, floor=True, floor_distill_minutes=8.0)["distillation"] == pytest.approx(8 * 60)
    assert _phases(targets=5, floor=True)["distillation"] == 0
