"""The quality floor's choices (floor.py) with the recoveries faked: which targets it
tries, in what order, by which recovery, and which artifact it keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppocompress.compress.recovery.distillation import DistillConfig
from ppocompress.search import floor as floor_module
from ppocompress.search.env import INT8_SPEEDUP, Target
from ppocompress.search.floor import SKIP_MARGIN, Judged, choose_target
from ppocompress.search.settings import (
    FLOOR_DISTILL_LEARNING_RATE,
    FLOOR_DISTILL_MINUTES,
    FLOOR_SECOND_TRIES,
    CompressSettings,
)

TARGETS = [Target(INT8_SPEEDUP, value) for value in (1.1, 1.25, 1.5, 2.0)]


class FakeProber:
    """Meets the floor where `meets` says, for (target label, recovery); an artifact in a
    folder of its own, as the real prober leaves one."""

    def __init__(self, meets: set[tuple[str, str]], staging: Path):
        self.meets, self.staging, self.made, self.beside, self.kept_if_missed = meets, staging, [], None, []

    def __call__(self, target: Target, settings: CompressSettings, keep_missed: bool = False) -> Judged | None:
        recovery = str(settings.recovery)
        if keep_missed:
            self.kept_if_missed.append((target.label, recovery))
        self.made.append(floor_module.FloorProbe(target.label, 0.99 if (target.label, recovery) in self.meets else 0.5,
                                                 recovery))
        if (target.label, recovery) not in self.meets:
            return None
        folder = self.staging / f"{recovery}-{target.label}"
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_text("x")
        return Judged(model=None, artifact=folder / "model.onnx", recovery=recovery)


def _floor(targets: list[Target], recovery: str = "lsq") -> CompressSettings:
    return CompressSettings(min_quality=0.98, target_set_int8_speedups=[t.value for t in targets], recovery=recovery)


def _choose(meets: set[tuple[str, str]], tmp_path: Path, monkeypatch, recovery: str = "lsq", estimates=None,
            targets: list[Target] = TARGETS):
    prober = FakeProber(meets, tmp_path)
    monkeypatch.setattr(floor_module, "_Prober", lambda *args: prober)
    floor, judged = choose_target(None, targets, {}, _floor(targets, recovery), lambda *args: None, tmp_path,
                                  log=lambda line: None, estimates=estimates)
    return floor, judged, [(probe.target, probe.recovery) for probe in prober.made]


def test_least_squares_is_probed_from_the_most_compressed_down_and_stops_at_the_first_met(tmp_path, monkeypatch):
    floor, judged, made = _choose({("1.25x int8", "lsq"), ("1.1x int8", "lsq")}, tmp_path, monkeypatch)
    assert made == [("2x int8", "lsq"), ("1.5x int8", "lsq"), ("1.25x int8", "lsq")]
    assert floor.chosen == "1.25x int8" and floor.chosen_probe.recovery == "lsq" and judged.artifact.exists()


def test_short_on_every_target_the_floor_distills_from_the_least_compressed_up_and_keeps_the_last_met(
        tmp_path, monkeypatch):
    floor, judged, made = _choose({("1.1x int8", "lsq+distill"), ("1.25x int8", "lsq+distill")}, tmp_path, monkeypatch)
    lsq = [(target.label, "lsq") for target in reversed(TARGETS)]
    distilled = [(label, "lsq+distill") for label in ("1.1x int8", "1.25x int8", "1.5x int8")][:FLOOR_SECOND_TRIES]
    last_met = distilled[-1][0] if len(distilled) < 3 else "1.25x int8"  # 1.5x does not meet it
    assert made == lsq + distilled
    assert floor.chosen == last_met and floor.chosen_probe == floor_module.FloorProbe(last_met, 0.99, "lsq+distill")
    assert judged.artifact.exists()
    assert (tmp_path / "lsq+distill-1.1x int8").exists() == (last_met == "1.1x int8")  # one it replaced is gone


@pytest.mark.parametrize("recovery", ["lsq", "none"])
def test_a_floor_the_second_recovery_misses_too_or_without_one_delivers_nothing_searched(tmp_path, monkeypatch, recovery):
    floor, judged, made = _choose(set(), tmp_path, monkeypatch, recovery)
    assert floor.chosen is None and judged is None
    assert made[-1] == (("1.1x int8", "lsq+distill") if recovery == "lsq" else ("1.1x int8", "none"))  # one missed: stop


def test_a_target_the_search_scored_far_below_the_floor_is_not_probed(tmp_path, monkeypatch):
    """Skipped where the search's score is below the floor by more than SKIP_MARGIN; the
    distillation climb still starts at the least compressed target."""
    estimates = {"2x int8": 0.90, "1.5x int8": 0.98 - SKIP_MARGIN - 0.001, "1.25x int8": 0.98 - SKIP_MARGIN + 0.001,
                 "1.1x int8": 0.99}
    floor, _, made = _choose(set(), tmp_path, monkeypatch, estimates=estimates)
    assert made == [("1.25x int8", "lsq"), ("1.1x int8", "lsq"), ("1.1x int8", "lsq+distill")]
    assert floor.skipped == {"2x int8": 0.90, "1.5x int8": estimates["1.5x int8"]} and floor.chosen is None
    everything_far, _, made = _choose({("1.1x int8", "lsq+distill")}, tmp_path / "far", monkeypatch,
                                      estimates=dict.fromkeys(estimates, 0.5))
    assert made == [("1.1x int8", "lsq+distill"), ("1.25x int8", "lsq+distill")][:FLOOR_SECOND_TRIES]
    assert everything_far.chosen == "1.1x int8" and not everything_far.skipped.keys() ^ estimates.keys()


@pytest.mark.parametrize("skipped", [False, True])
def test_delivery_is_given_the_first_recovery_s_probe_of_the_least_compressed_target_only(tmp_path, monkeypatch, skipped):
    """Measured beside dense int8 as the other searchers' plans are (least squares), never
    a distillation of the climb; none if that target was not probed."""
    prober = FakeProber(set(), tmp_path)
    monkeypatch.setattr(floor_module, "_Prober", lambda *args: prober)
    estimates = {target.label: 0.5 for target in TARGETS} if skipped else None
    choose_target(None, TARGETS, {}, _floor(TARGETS), lambda *args: None, tmp_path, log=lambda line: None,
                  estimates=estimates)
    assert prober.kept_if_missed == ([] if skipped else [("1.1x int8", "lsq")])
    assert ("1.1x int8", "lsq+distill") in [(probe.target, probe.recovery) for probe in prober.made]


def test_only_a_least_squares_floor_run_distills_as_a_second_try():
    floor = CompressSettings(min_quality=0.98, target_speedup=2.0, recovery="lsq")
    second = floor.floor_distillation()
    assert second.recovery == "lsq+distill" and second.distillation().minutes == FLOOR_DISTILL_MINUTES
    assert CompressSettings(min_quality=0.98, target_speedup=2.0, recover_minutes=1.5).floor_distillation().recover_minutes == 1.5
    assert second.distillation().learning_rate == FLOOR_DISTILL_LEARNING_RATE  # a floor's plans are near the dense model
    assert CompressSettings(target_speedup=2.0).distillation().learning_rate == DistillConfig().learning_rate
    for asked in (dict(recovery="lsq+distill"), dict(recovery="none"), dict(min_quality=None)):
        assert CompressSettings(**{"min_quality": 0.98, "target_speedup": 2.0, **asked}).floor_distillation() is None


def test_size_targets_are_probed_from_the_smallest_and_distilled_from_the_largest(tmp_path, monkeypatch):
    sizes = [Target("size", value) for value in (0.5, 0.2, 0.3)]
    prober = FakeProber({("size 0.5", "lsq+distill")}, tmp_path)
    monkeypatch.setattr(floor_module, "_Prober", lambda *args: prober)
    settings = CompressSettings(min_quality=0.98, target_set_sizes=[0.5, 0.2, 0.3])
    floor, _ = choose_target(None, sizes, {}, settings, lambda *args: None, tmp_path, log=lambda line: None)
    assert [(probe.target, probe.recovery) for probe in prober.made] == [
        ("size 0.2", "lsq"), ("size 0.3", "lsq"), ("size 0.5", "lsq"), ("size 0.5", "lsq+distill"), ("size 0.3", "lsq+distill")]
    assert floor.chosen == "size 0.5"
