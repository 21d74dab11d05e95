"""What `ppocompress compress` is asked for: CompressSettings, checked before anything
long starts (a bad value is one UserError line)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from ppocompress.compress.commands.runtime_choice import check_runtime
from ppocompress.compress.data.text import CALIBRATION_PASSAGES, EVALUATION_PASSAGES
from ppocompress.compress.measure.timing import DEFAULT_THREADS, TimingSetup, check_threads
from ppocompress.compress.models.loading import model_is_causal, resolve_source
from ppocompress.compress.recovery.distillation import DistillConfig
from ppocompress.compress.recovery.method import Recovery
from ppocompress.compress.runtimes import AUTO
from ppocompress.errors import UserError
from ppocompress.search.env import INT8_SPEEDUP, SIZE, SPEEDUP, Target
from ppocompress.search.policy import POLICY_HINT
from ppocompress.search.searchers import DEFAULT_SEARCHER, SEARCHERS, get_searcher, policy_searchers

# An encoder's default run is quality-first: it delivers the most compressed plan that
# keeps this cosine on validation text (floor.py), a fidelity at which a user still gets
# most of the dense model's neighbours back; dense int8 keeps more on every runtime.
DEFAULT_MIN_QUALITY = 0.98
# The targets a quality floor searches when none is given: speedups against the dense
# int8 model on the serving runtime, since that model is what a floor falls back to and
# what a user gets with no search at all. The lowest rung is the first a plan with a
# little structure removed reaches.
FLOOR_INT8_SPEEDUPS = (1.1, 1.25, 1.5, 2.0)
# Where least squares meets a floor on no target, the floor distills: from the least
# compressed target up, this many at most, each for this long unless --recover-minutes
# says otherwise (short: a default run stays within a sitting).
FLOOR_SECOND_TRIES = 2
FLOOR_DISTILL_MINUTES = 3.0
# A floor's plans are near the dense model (their quality is what it asks for), where
# distillation's usual steps first undo what least squares won; smaller ones gain from
# the first (docs/how-it-works.md#a-quality-floor).
FLOOR_DISTILL_LEARNING_RATE = 1e-4
# A causal LM's default target, against the dense int8 model itself (on an LLM runtime
# int8 is already several times PyTorch, by a factor that depends on the CPU's float
# precision), below what int4 in every layer gives: there the plan is chosen layer by
# layer between int4, int8 and pruning, where NNCF's mixed precision chooses by a one-pass
# ranking; beyond it, a plan must also remove structure, which costs a small decoder far
# more than int4 does.
DEFAULT_DECODER_INT8_SPEEDUP = 1.2
# Evaluations per searcher. A causal LM's cost several times an encoder's, so it is given
# fewer, which keeps a default decoder run within the length of a sitting.
DEFAULT_EVALS = {False: 200, True: 100}
# A target set's default evaluations, per searcher: those of this many single-target runs
# (a floor's, which delivers one model: those of one run)
TARGET_SET_RUNS = 2
MEASURED, FLOPS = "measured", "flops"  # --cost: a latency table timed on the serving runtime, or FLOPs


@dataclass
class CompressSettings:
    model: str | None = None
    # The target fields and min_quality: none given, the model's default (default_target)
    target_speedup: float | None = None
    target_size: float | None = None
    target_int8_speedup: float | None = None  # against the dense int8 model on the serving runtime
    target_set_speedups: list[float] | None = None  # --targets: a model per speedup, from one search
    target_set_sizes: list[float] | None = None  # --target-sizes
    target_set_int8_speedups: list[float] | None = None  # --target-int8-speedups
    # --min-quality: deliver the most compressed target whose plan keeps this fidelity on
    # validation text (floor.py), dense int8 if none does
    min_quality: float | None = None
    policy: str | None = None  # a saved search policy the policy searcher starts from
    searcher: str = DEFAULT_SEARCHER
    # Evaluations per searcher (a target set: over all its targets); None: DEFAULT_EVALS, TARGET_SET_RUNS times for a
    # set delivered whole
    evals: int | None = None
    recovery: Recovery = Recovery.LSQ
    recover_minutes: float | None = None  # how long a distillation may take; None: DistillConfig's default
    seed: int = 0
    baselines: bool = True
    threads: int = DEFAULT_THREADS
    text: str | None = None
    cost: str = MEASURED
    runtime: str = AUTO  # --runtime: the fastest dense int8 model's runtime when timed, else prepare.PREFERENCE's first
    trust_remote_code: bool = False
    calibration_texts: int = CALIBRATION_PASSAGES
    evaluation_texts: int = EVALUATION_PASSAGES

    def __post_init__(self) -> None:
        asked = (self.target_speedup, self.target_size, self.target_int8_speedup, *self._target_sets().values())
        if all(value is None for value in asked):
            default = default_target(self.model, self.trust_remote_code) if self.min_quality is None else floor_targets()
            for name, value in default.items():
                setattr(self, name, value)

    def targets(self) -> list[Target]:
        """The target, or the target set's (ascending, each once); every value checked."""
        given = {SPEEDUP: self.target_speedup, SIZE: self.target_size, INT8_SPEEDUP: self.target_int8_speedup}
        sets = self._target_sets()
        if sum(v is not None for v in (*given.values(), *sets.values())) != 1:
            raise UserError("give exactly one of --target-speedup, --target-int8-speedup, --target-size, --targets, "
                            "--target-int8-speedups and --target-sizes")
        kind = next(k for k in given if given[k] is not None or sets[k] is not None)
        values = sets[kind] if sets[kind] is not None else [given[kind]]
        if not values:
            raise UserError("--targets, --target-int8-speedups and --target-sizes need at least one value")
        targets = [Target(kind, value) for value in sorted(set(values))]
        for target in targets:
            target.budget(1.0, 1.0)  # the value's own range
        return targets

    @property
    def delivers_set(self) -> bool:
        """A model per target (a target set with no floor to choose one of them)."""
        return self.is_target_set and self.min_quality is None

    @property
    def is_target_set(self) -> bool:
        """Asked for a target set (--targets, --target-int8-speedups, --target-sizes), even of one target."""
        return any(values is not None for values in self._target_sets().values())

    def _target_sets(self) -> dict[str, list[float] | None]:
        """Each kind of target's set, as asked (None: not asked)."""
        return {SPEEDUP: self.target_set_speedups, SIZE: self.target_set_sizes, INT8_SPEEDUP: self.target_set_int8_speedups}

    def searchers(self) -> list[str]:
        """The chosen searcher first, then the baselines on as many evaluations."""
        return [self.searcher] + ([s for s in SEARCHERS if s != self.searcher] if self.baselines else [])

    def max_evaluations(self, causal: bool) -> int:
        """Evaluations each searcher may make (over the whole target set)."""
        if self.evals is not None:
            return self.evals
        return DEFAULT_EVALS[causal] * (TARGET_SET_RUNS if self.delivers_set else 1)

    def distillation(self) -> DistillConfig:
        """How each delivered plan is distilled (if the recovery distills): a floor's, after
        least squares, at FLOOR_DISTILL_LEARNING_RATE."""
        config = DistillConfig(seed=self.seed) if self.recover_minutes is None else DistillConfig(
            minutes=self.recover_minutes, seed=self.seed)
        if self.min_quality is None or Recovery.parse(self.recovery) != Recovery.LSQ_DISTILL:
            return config
        return replace(config, learning_rate=FLOOR_DISTILL_LEARNING_RATE)

    def floor_distillation(self) -> CompressSettings | None:
        """The settings a floor's second try recovers with (floor.py): least squares, then
        distillation, where this run's recovery is least squares alone; None where there
        is no floor, or the run distills already, or recovers nothing as asked."""
        if self.min_quality is None or Recovery.parse(self.recovery) != Recovery.LSQ:
            return None
        return replace(self, recovery=Recovery.LSQ_DISTILL, recover_minutes=self.recover_minutes or FLOOR_DISTILL_MINUTES)

    def floor_distill_minutes(self) -> float:
        """The longest a floor's distillations may take, all of them (0: it makes none)."""
        second = self.floor_distillation()
        return 0.0 if second is None else FLOOR_SECOND_TRIES * second.distillation().minutes

    def timing(self, causal: bool) -> TimingSetup:
        return TimingSetup.for_model(causal, self.threads)

    def validate(self) -> None:
        self.targets()
        if self.policy is not None and self.searcher not in policy_searchers():
            starts = " or ".join(policy_searchers())
            raise UserError(f"--policy starts the {starts} searcher; drop it or use --searcher {starts} (got {self.searcher})")
        if self.policy is not None and not Path(self.policy).is_dir():
            raise UserError(f"--policy {self.policy} is not a folder; {POLICY_HINT}")
        self.timing(causal=False)
        check_threads(self.threads)
        if self.min_quality is not None and not (math.isfinite(self.min_quality) and 0.0 < self.min_quality <= 1.0):
            raise UserError(f"--min-quality must be a number in (0, 1] (validation cosine for an encoder, exp(-KL) for "
                            f"a causal LM), got {self.min_quality}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        resolve_source(self.model)  # a mistyped path fails here, not after minutes
        get_searcher(self.searcher)
        if self.evals is not None and self.evals < 1:
            raise UserError(f"--evals must be >= 1, got {self.evals}")
        if self.cost not in (MEASURED, FLOPS):
            raise UserError(f"--cost must be {MEASURED} or {FLOPS}, got {self.cost!r}")
        Recovery.parse(self.recovery)
        self.distillation()
        check_runtime(self.runtime)


def floor_targets() -> dict:
    """The targets a quality floor searches when none is given, as CompressSettings' fields."""
    return {"target_set_int8_speedups": list(FLOOR_INT8_SPEEDUPS)}


def default_target(model: str | None, trust_remote_code: bool = False) -> dict:
    """What a run asks for when no target is given, as CompressSettings' fields: an
    encoder's quality floor (DEFAULT_MIN_QUALITY over FLOOR_INT8_SPEEDUPS), a causal LM's
    DEFAULT_DECODER_INT8_SPEEDUP."""
    if model_is_causal(model, trust_remote_code):
        return {"target_int8_speedup": DEFAULT_DECODER_INT8_SPEEDUP}
    return {"min_quality": DEFAULT_MIN_QUALITY, **floor_targets()}
