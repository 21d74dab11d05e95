"""The quality floor's choices (floor.py) with the recoveries faked: which targets it
tries, in what order, by which recovery, and which artifact it keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from ppocompress.search import floor as floor_module
from ppocompress.search.env import INT8_SPEEDUP, Target
from ppocompress.search.floor import Judged, Recoveries, choose_target
from ppocompress.search.settings import FLOOR_DISTILL_MINUTES, FLOOR_SECOND_TRIES, CompressSettings

TARGETS = [Target(INT8_SPEEDUP, value) for value in (1.1, 1.25, 1.5, 2.0)]


class FakeProber:
    """Meets the floor where `meets` says, for (target label, recovery); an artifact in a
    folder of its own, as the real prober leaves one."""

    def __init__(self, meets: set[tuple[str, str]], staging: Path):
        self.meets, self.staging, self.made = meets, staging, []

    def __call__(self, target: Target, recover, recovery: str) -> Judged | None:
        self.made.append(floor_module.FloorProbe(target.label, 0.99 if (target.label, recovery) in self.meets else 0.5,
                                                 recovery))
        if (target.label, recovery) not in self.meets:
            return None
        folder = self.staging / f"{recovery}-{target.label}"
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_text("x")
        return Judged(model=None, artifact=folder / "model.onnx")


def _choose(meets: set[tuple[str, str]], tmp_path: Path, monkeypatch, second: bool = True):
    prober = FakeProber(meets, tmp_path)
    monkeypatch.setattr(floor_module, "_Prober", lambda *args: prober)
    recoveries = Recoveries(lambda plan, checkpoint: None, "lsq",
                            *((lambda plan, checkpoint: None, "lsq+distill") if second else ()))
    floor, judged = choose_target(None, TARGETS, {}, 0.98, recoveries, tmp_path, log=lambda line: None)
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


@pytest.mark.parametrize("second", [True, False])
def test_a_floor_the_second_recovery_misses_too_or_without_one_delivers_nothing_searched(tmp_path, monkeypatch, second):
    floor, judged, made = _choose(set(), tmp_path, monkeypatch, second=second)
    assert floor.chosen is None and judged is None
    assert made[-1] == (("1.1x int8", "lsq+distill") if second else ("1.1x int8", "lsq"))  # one distillation missed: stop


def test_only_a_least_squares_floor_run_distills_as_a_second_try():
    floor = CompressSettings(min_quality=0.98, target_speedup=2.0, recovery="lsq")
    second = floor.floor_distillation()
    assert second.recovery == "lsq+distill" and second.distillation().minutes == FLOOR_DISTILL_MINUTES
    assert CompressSettings(min_quality=0.98, target_speedup=2.0, recover_minutes=1.5).floor_distillation().recover_minutes == 1.5
    for asked in (dict(recovery="lsq+distill"), dict(recovery="none"), dict(min_quality=None)):
        assert CompressSettings(**{"min_quality": 0.98, "target_speedup": 2.0, **asked}).floor_distillation() is None


def test_size_targets_are_probed_from_the_smallest_and_distilled_from_the_largest(tmp_path, monkeypatch):
    sizes = [Target("size", value) for value in (0.5, 0.2, 0.3)]
    prober = FakeProber({("size 0.5", "lsq+distill")}, tmp_path)
    monkeypatch.setattr(floor_module, "_Prober", lambda *args: prober)
    recoveries = Recoveries(lambda plan, checkpoint: None, "lsq", lambda plan, checkpoint: None, "lsq+distill")
    floor, _ = choose_target(None, sizes, {}, 0.98, recoveries, tmp_path, log=lambda line: None)
    assert [(probe.target, probe.recovery) for probe in prober.made] == [
        ("size 0.2", "lsq"), ("size 0.3", "lsq"), ("size 0.5", "lsq"), ("size 0.5", "lsq+distill"), ("size 0.3", "lsq+distill")]
    assert floor.chosen == "size 0.5"
