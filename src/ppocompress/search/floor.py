"""A quality floor (`compress --min-quality C`): of the targets searched, deliver the most
compressed one whose plan, recovered as delivery recovers it, keeps at least C on
validation text; the dense int8 model when none does.

Quality is what the search maximises (HeldOutQuality.fidelity): an encoder's mean cosine
to the dense model's embeddings, a causal LM's exp(-KL) of its next-token distributions to
the dense model's (0.95 allows a KL of 0.051). The choice is made on validation text, a
source no fit saw, so that the held-out text the result reports stays unseen by every
choice: the held-out quality is the guarantee's measure, and a delivered model found below
the floor there is flagged, not hidden.

Targets are probed from the most compressed down and the first that meets the floor is
chosen: a plan's quality falls, with rare exceptions, as its target rises, and probing
stops as soon as one passes, so a floor that allows a fast target costs one recovery.
Where least squares meets the floor on no target, distillation is tried, from the least
compressed target up while it meets the floor: it lifts a plan's quality far more, at
minutes a plan (settings.floor_distillation says when).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ppocompress.compress.measure.quality import HeldOut
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.runtimes import get_runtime
from ppocompress.search.env import SIZE, Target
from ppocompress.search.plan import Plan
from ppocompress.search.prepare import Prepared
from ppocompress.search.results import FloorProbe, QualityFloor
from ppocompress.search.settings import FLOOR_SECOND_TRIES


@dataclass(frozen=True)
class Judged:
    """The chosen plan's model as the floor judged it, and the artifact it was judged from:
    delivery ships both as they are, so a time-bounded distillation is not run twice (nor
    its weights changed after the choice) and the export is not made again."""

    model: LoadedModel
    artifact: Path


def most_compressed_first(targets: list[Target]) -> list[Target]:
    """The order probes are made in: the highest speedup, or the smallest size, first."""
    return sorted(targets, key=lambda target: target.value, reverse=targets[0].kind != SIZE)


@dataclass(frozen=True)
class Recoveries:
    """How the floor recovers a plan: `first` as delivery recovers it, and where that meets
    the floor on no target, `then` (distillation; None: no second try). Each is called
    (plan, checkpoint) and gives the recovered model (checkpoint: where a distillation
    saves its progress)."""

    first: Callable[[Plan, str], LoadedModel]
    first_name: str
    then: Callable[[Plan, str], LoadedModel] | None = None
    then_name: str = ""


def choose_target(prepared: Prepared, targets: list[Target], plans: dict[str, Plan], min_quality: float,
                  recoveries: Recoveries, staging: Path, log) -> tuple[QualityFloor, Judged | None]:
    """What the floor chose, and the chosen plan as it was judged (None: no plan met the
    floor), its artifact left in `staging` for delivery. plans: the delivered searcher's
    plan per target label."""
    probe = _Prober(prepared, plans, min_quality, staging, log)
    for target in most_compressed_first(targets):
        judged = probe(target, recoveries.first, recoveries.first_name)
        if judged is not None:
            return QualityFloor(min_quality, probe.made, target.label), judged
    chosen, judged = None, None
    if recoveries.then is not None:
        chosen, judged = _climb(probe, targets, recoveries)
    if chosen is None:
        log(f"floor {min_quality:g}: no target's plan keeps it on validation text; the dense int8 model is delivered")
    return QualityFloor(min_quality, probe.made, chosen), judged


def _climb(probe: "_Prober", targets: list[Target], recoveries: Recoveries) -> tuple[str | None, Judged | None]:
    """The second recovery, from the least compressed target up while it meets the floor,
    at most FLOOR_SECOND_TRIES times: it costs minutes a plan, and a plan the first
    recovery left far below the floor is beyond it. The last target met, and its model."""
    chosen, judged = None, None
    for target in most_compressed_first(targets)[::-1][:FLOOR_SECOND_TRIES]:
        better = probe(target, recoveries.then, recoveries.then_name)
        if better is None:
            break
        if judged is not None:
            shutil.rmtree(judged.artifact.parent, ignore_errors=True)
        chosen, judged = target.label, better
    return chosen, judged


class _Prober:
    """Recovers a target's plan, exports it and judges it on validation text; keeps every
    probe made, and the artifact of one that met the floor (in a folder of its own, the
    artifact's parent, as every runtime exports)."""

    def __init__(self, prepared: Prepared, plans: dict[str, Plan], min_quality: float, staging: Path, log):
        self.prepared, self.plans, self.min_quality, self.staging, self.log = prepared, plans, min_quality, staging, log
        self.runtime = get_runtime(prepared.runtime)
        self.validation = HeldOut(prepared.dense, prepared.texts.validation)
        self.made: list[FloorProbe] = []

    def __call__(self, target: Target, recover, recovery: str) -> Judged | None:
        folder = self.staging / f"{recovery}-{target.label}".replace(" ", "-").replace("+", "-")
        model = recover(self.plans[target.label], f"floor-{folder.name}")
        artifact = self.runtime.export(model, folder, self.prepared.texts.calibration)
        quality = self.validation.judge(self.runtime.session(artifact)).fidelity
        self.made.append(FloorProbe(target.label, quality, recovery))
        met = quality >= self.min_quality
        self.log(f"floor {self.min_quality:g}: {target.description}, {recovery}, keeps {quality:.4f} on validation text"
                 + (", met" if met else ""))
        if met:
            return Judged(model, artifact)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def delivered_target(targets: list[Target], floor: QualityFloor) -> Target:
    """The target delivered beside the floor's choice: the chosen one, or when none met
    the floor the least compressed (whose searchers' plans are measured beside dense int8)."""
    by_label = {target.label: target for target in targets}
    return by_label[floor.chosen] if floor.met else most_compressed_first(targets)[-1]
