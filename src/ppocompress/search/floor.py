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
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ppocompress.compress.measure.quality import HeldOut
from ppocompress.compress.models.loading import LoadedModel
from ppocompress.compress.runtimes import get_runtime
from ppocompress.search.env import SIZE, Target
from ppocompress.search.plan import Plan
from ppocompress.search.prepare import Prepared
from ppocompress.search.results import FloorProbe, QualityFloor


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


def choose_target(prepared: Prepared, targets: list[Target], plans: dict[str, Plan], min_quality: float,
                  recover, staging: Path, log) -> tuple[QualityFloor, Judged | None]:
    """What the floor chose, and the chosen plan as it was judged (None: no plan met the
    floor), its artifact left in `staging` for delivery. plans: the delivered searcher's
    plan per target label; recover(plan, checkpoint) gives the plan's model recovered as
    delivery recovers it (checkpoint: where a distillation saves its progress)."""
    runtime = get_runtime(prepared.runtime)
    validation = HeldOut(prepared.dense, prepared.texts.validation)
    probes: list[FloorProbe] = []
    for target in most_compressed_first(targets):
        folder = staging / target.label.replace(" ", "-")
        model = recover(plans[target.label], f"floor-{folder.name}")
        artifact = runtime.export(model, folder, prepared.texts.calibration)
        quality = validation.judge(runtime.session(artifact)).fidelity
        probes.append(FloorProbe(target.label, quality))
        log(f"floor {min_quality:g}: {target.description} keeps {quality:.4f} on validation text"
            + (", chosen" if quality >= min_quality else ""))
        if quality >= min_quality:
            return QualityFloor(min_quality, probes, target.label), Judged(model, artifact)
        shutil.rmtree(folder, ignore_errors=True)
    log(f"floor {min_quality:g}: no target's plan keeps it on validation text; the dense int8 model is delivered")
    return QualityFloor(min_quality, probes, None), None


def delivered_target(targets: list[Target], floor: QualityFloor) -> Target:
    """The target delivered beside the floor's choice: the chosen one, or when none met
    the floor the least compressed (whose searchers' plans are measured beside dense int8)."""
    by_label = {target.label: target for target in targets}
    return by_label[floor.chosen] if floor.met else most_compressed_first(targets)[-1]
