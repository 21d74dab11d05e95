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
A target whose plan the search itself scored below the floor by more than SKIP_MARGIN is
not probed: the search prices in the same recovery (least squares, or none) and int8 as
the runtime computes it, on text the fit did not see, so its score is the probe's on
other text, at a fraction of the probe's cost. Where the first recovery meets the floor on no
target, distillation is tried, from the least compressed target up while it meets the
floor: it lifts a plan's quality far more, at minutes a plan (settings.floor_distillation
says when).
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
from ppocompress.search.settings import FLOOR_SECOND_TRIES, CompressSettings


@dataclass(frozen=True)
class Judged:
    """A plan's model as the floor judged it, and the artifact it was judged from: delivery
    ships both as they are, so a time-bounded distillation is not run twice (nor its
    weights changed after the choice) and the export is not made again."""

    model: LoadedModel
    artifact: Path
    recovery: str  # how it was recovered (a Recovery's name)


def most_compressed_first(targets: list[Target]) -> list[Target]:
    """The order probes are made in: the highest speedup, or the smallest size, first."""
    return sorted(targets, key=lambda target: target.value, reverse=targets[0].kind != SIZE)


# How far below the floor the search's own score of a plan may be for it still to be
# probed: scores on a few hundred passages of another text scatter by about this much.
SKIP_MARGIN = 0.01

Recover = Callable[[CompressSettings, Plan, str], LoadedModel]  # (how, plan, checkpoint) -> the recovered model


def choose_target(prepared: Prepared, targets: list[Target], plans: dict[str, Plan], settings: CompressSettings,
                  recover: Recover, staging: Path, log,
                  estimates: dict[str, float] | None = None) -> tuple[QualityFloor, Judged | None]:
    """What the floor (settings.min_quality) chose, and the chosen plan as it was judged,
    its artifact left in `staging` for delivery; where no plan met the floor, the plan
    measured beside dense int8 (beside_int8's) as the first recovery judged it, if it was
    probed, else None. plans: the delivered searcher's plan per target label;
    recover(settings, plan, checkpoint) recovers a plan as `settings` say (checkpoint:
    where a distillation saves its progress); estimates: the search's own score of each
    plan, where it priced in the run's recovery (None: it did not)."""
    min_quality, estimates = settings.min_quality, estimates or {}
    probe = _Prober(prepared, plans, min_quality, recover, staging, log)
    beside = beside_int8(targets).label
    skipped: dict[str, float] = {}
    for target in most_compressed_first(targets):
        estimate = estimates.get(target.label)
        if estimate is not None and estimate < min_quality - SKIP_MARGIN:
            skipped[target.label] = estimate
            log(f"floor {min_quality:g}: {target.description}, not probed: the search scored its plan {estimate:.4f}")
            continue
        judged = probe(target, settings, keep_missed=target.label == beside)
        if judged is not None:
            return QualityFloor(min_quality, probe.made, target.label, skipped), judged
    chosen, judged = None, None
    second = settings.floor_distillation()
    if second is not None:
        chosen, judged = _climb(probe, targets, second)
    if chosen is None:
        log(f"floor {min_quality:g}: no target's plan keeps it on validation text; the dense int8 model is delivered")
        judged = probe.beside
    return QualityFloor(min_quality, probe.made, chosen, skipped), judged


def _climb(probe: "_Prober", targets: list[Target], second: CompressSettings) -> tuple[str | None, Judged | None]:
    """The second recovery, from the least compressed target up while it meets the floor,
    at most FLOOR_SECOND_TRIES times: it costs minutes a plan, and a plan the first
    recovery left far below the floor is beyond it. The last target met, and its model."""
    chosen, judged = None, None
    for target in most_compressed_first(targets)[::-1][:FLOOR_SECOND_TRIES]:
        better = probe(target, second)
        if better is None:
            break
        if judged is not None:
            shutil.rmtree(judged.artifact.parent, ignore_errors=True)
        chosen, judged = target.label, better
    return chosen, judged


class _Prober:
    """Recovers a target's plan, exports it and judges it on validation text; keeps every
    probe made, and the artifact of one that met the floor (in a folder of its own, the
    artifact's parent, as every runtime exports), and of one asked to keep even if it
    missed (`beside`: the plan delivery measures beside dense int8, not recovered again)."""

    def __init__(self, prepared: Prepared, plans: dict[str, Plan], min_quality: float, recover: Recover, staging: Path,
                 log):
        self.prepared, self.plans, self.min_quality, self.recover = prepared, plans, min_quality, recover
        self.staging, self.log = staging, log
        self.runtime = get_runtime(prepared.runtime)
        self.validation = HeldOut(prepared.dense, prepared.texts.validation)
        self.made: list[FloorProbe] = []
        self.beside: Judged | None = None

    def __call__(self, target: Target, settings: CompressSettings, keep_missed: bool = False) -> Judged | None:
        recovery = str(settings.recovery)
        folder = self.staging / f"{recovery}-{target.label}".replace(" ", "-").replace("+", "-")
        model = self.recover(settings, self.plans[target.label], f"floor-{folder.name}")
        artifact = self.runtime.export(model, folder, self.prepared.texts.calibration)
        quality = self.validation.judge(self.runtime.session(artifact)).fidelity
        self.made.append(FloorProbe(target.label, quality, recovery))
        met = quality >= self.min_quality
        self.log(f"floor {self.min_quality:g}: {target.description}, {recovery}, keeps {quality:.4f} on validation text"
                 + (", met" if met else ""))
        if met:
            return Judged(model, artifact, recovery)
        if keep_missed:
            self.beside = Judged(model, artifact, recovery)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        return None


def beside_int8(targets: list[Target]) -> Target:
    """The target whose plans are measured beside dense int8 when no plan meets the floor:
    the least compressed."""
    return most_compressed_first(targets)[-1]


def delivered_target(targets: list[Target], floor: QualityFloor) -> Target:
    """The target delivered beside the floor's choice: the chosen one, or beside_int8."""
    by_label = {target.label: target for target in targets}
    return by_label[floor.chosen] if floor.met else beside_int8(targets)
