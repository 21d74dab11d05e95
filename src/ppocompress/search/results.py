"""What `ppocompress compress` delivers, as typed records: written to result.json, read by
the terminal summary, the report and the benchmarks (one schema, no keys built up)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ppocompress.compress.measure.quality import HeldOutQuality
from ppocompress.compress.measure.retrieval import TOP_K
from ppocompress.compress.measure.timing import LatencyResult, TimingSetup
from ppocompress.compress.recovery.distillation import DistillReport
from ppocompress.errors import UserError
from ppocompress.search.env import Target
from ppocompress.search.files import OUT_FOLDER, RESULT_FILE, RUN_AGAIN, TARGET_SET_FILE, read_versioned
from ppocompress.search.levels import Level
from ppocompress.search.plan import level_names, levels_from_names
from ppocompress.search.recorder import Evaluation

RESULT_FORMAT = "ppocompress.result/3"  # 3: a floor's probes name their recovery
# Format 2 differs only there, so a result of 2 without a floor reads as it is; one with a
# floor fails the schema check (its probes lack their recovery) and is run again.
READABLE_RESULT_FORMATS = ("ppocompress.result/2",)


@dataclass
class MeasuredModel(HeldOutQuality):
    """One model timed and judged in the delivery run: a searcher's plan on the serving
    runtime, or a dense alternative a user could ship with no search at all."""

    name: str  # "ppo", "evolutionary", ..., "dense int8", "dense"
    runtime: str
    latency: LatencyResult
    speedup: float  # against dense PyTorch fp32, same rounds
    speedup_vs_dense_int8: float  # against the dense model on the serving runtime with int8
    size_bytes: int  # the served artifact on disk
    levels: tuple[Level, ...] | None = None  # the plan's level per layer (by name in result.json); None for the dense models
    plan: dict | None = None  # the engine's plan (CompressionPlan.to_dict: the units each layer keeps)
    evaluations: int | None = None  # plan evaluations the searcher spent
    predicted_speedup: float | None = None  # by the latency table
    predicted_latency_ms: float | None = None
    distillation: DistillReport | None = None  # how its recovery's distillation went, if it had one
    speedup_over_rounds: list[float] = field(default_factory=list)  # against dense PyTorch fp32, round by round

    def speedup_range(self) -> tuple[float, float]:
        """The lowest and highest speedup over the interleaved rounds (the headline's when
        rounds were not recorded)."""
        rounds = self.speedup_over_rounds or [self.speedup]
        return min(rounds), max(rounds)

    def to_dict(self) -> dict:
        return {**asdict(self), "levels": None if self.levels is None else level_names(self.levels)}

    @classmethod
    def from_dict(cls, data: dict) -> "MeasuredModel":
        distillation, levels = data.get("distillation"), data.get("levels")
        return cls(**{**data, "latency": LatencyResult(**data["latency"]),
                      "levels": None if levels is None else levels_from_names(levels),
                      "distillation": None if distillation is None else DistillReport.from_dict(distillation)})


@dataclass
class FloorProbe:
    """One target's plan, recovered, judged on validation text."""

    target: str  # the target's label
    quality: float  # fidelity on validation text
    recovery: str  # how the plan was recovered (a Recovery's name)


@dataclass
class QualityFloor:
    """What the floor chose: probes in the order made (most compressed first, then any
    distillations from the least compressed up); chosen is the delivered target's label,
    None when no target met the floor (dense int8 delivered); skipped: the targets not
    probed, with the search's own score of their plan, too far below the floor."""

    min_quality: float
    probes: list[FloorProbe]
    chosen: str | None
    skipped: dict[str, float] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return self.chosen is not None

    @property
    def chosen_probe(self) -> FloorProbe | None:
        """The probe that met the floor (the last made: probing stops at it, or it is the
        last distillation that met it)."""
        return next((probe for probe in reversed(self.probes) if probe.target == self.chosen), None)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QualityFloor":
        return cls(data["min_quality"], [FloorProbe(**probe) for probe in data["probes"]], data["chosen"],
                   data.get("skipped", {}))  # absent where none was skipped before skipping was


def delivers_dense_int8(floor: QualityFloor | None) -> bool:
    """Whether a run delivers the dense int8 model, not a plan: its floor was met by none."""
    return floor is not None and not floor.met


def quality_columns(causal: bool, detailed: bool = False) -> list[tuple[str, str, str]]:
    """(header, MeasuredModel field, format) of the held-out quality a summary shows;
    detailed: the report's, which has room for all of them under their full names."""
    if causal:
        return [("KL", "kl_heldout", ".4f"), ("ppl", "perplexity_heldout", ".2f"), ("top-1", "top1_agreement", ".3f")]
    if not detailed:  # an 80-column terminal's: retrieval's headers in two lines
        return [("cosine", "cosine_heldout", ".4f"), (f"nbr\n@{TOP_K}", "neighbour_recall_at_10", ".3f"),
                (f"task\n@{TOP_K}", "task_recall_at_10", ".3f")]
    return [("cosine", "cosine_heldout", ".4f"), ("min cosine", "cosine_heldout_min", ".4f"),
            (f"neighbour recall@{TOP_K}", "neighbour_recall_at_10", ".3f"), (f"task recall@{TOP_K}", "task_recall_at_10", ".3f"),
            ("task MRR", "task_mrr", ".3f"), ("Lee", "lee_pearson", ".3f")]


@dataclass
class CompressResult:
    model: str
    runtime: str  # where the delivered model is served and the search priced plans
    target_kind: str  # a Target's kind: "speedup", "int8-speedup" or "size"
    target_value: float
    searcher: str  # whose plan was delivered
    timing: TimingSetup
    reference_latency: LatencyResult  # dense PyTorch fp32, same rounds
    dense_lee_pearson: float | None  # encoders
    dense_size_bytes: int  # dense safetensors
    searchers: dict[str, MeasuredModel]  # every searcher's best plan, delivered and measured
    dense: MeasuredModel  # dense, the runtime's default precision
    dense_int8: MeasuredModel  # dense, the runtime's int8: the no-effort alternative
    sensitivity_evaluations: int  # shared by all searchers and not counted in their evaluations
    latency_table: dict | None = None  # runtime and largest error on mixed plans; None for FLOPs
    # More alternatives with no search, where the runtime serves int4 (decoders on OpenVINO):
    # dense int4, and NNCF's own mixed precision at the delivered plan's weight bytes.
    alternatives: dict[str, MeasuredModel] = field(default_factory=dict)
    curves: dict[str, list] = field(default_factory=dict)  # searcher -> [(evaluations, best reward)]
    evaluated: dict[str, list[Evaluation]] = field(default_factory=dict)  # searcher -> every plan it scored, in order
    warnings: list[str] = field(default_factory=list)
    generations: dict[str, list[str]] = field(default_factory=dict)  # causal LMs: "prompts", "dense", the delivered
    # Wall time of "preparation", "search", a floor's probes ("floor") and this model's
    # "delivery", summed over resumed attempts (a killed attempt's unfinished phase is not counted).
    run_seconds: dict[str, float] = field(default_factory=dict)
    floor: QualityFloor | None = None  # --min-quality: what it chose, and on what
    format: str = RESULT_FORMAT

    @property
    def causal(self) -> bool:
        return self.dense.kl_heldout is not None

    @property
    def fidelity_name(self) -> str:
        """What MeasuredModel.fidelity and the search's rewards measure."""
        return "exp(-KL) of next-token distributions" if self.causal else "cosine of embeddings"

    @property
    def fidelity_short_name(self) -> str:
        """"exp(-KL)" or "cosine", for an axis."""
        return self.fidelity_name.split(" of ")[0]

    @property
    def target(self) -> Target:
        return Target(self.target_kind, self.target_value)

    @property
    def target_label(self) -> str:
        """"4x" or "size 0.5"."""
        return self.target.label

    @property
    def delivered(self) -> MeasuredModel:
        """The searcher's model, or dense int8 where a quality floor was met by no plan."""
        return self.dense_int8 if delivers_dense_int8(self.floor) else self.searchers[self.searcher]

    def prefill_speedup(self, model: MeasuredModel) -> float | None:
        """A causal LM's prompt processing against dense PyTorch fp32 (speedup is of decoding)."""
        if not self.timing.generates:
            return None
        return self.reference_latency.prefill_ms / model.latency.prefill_ms

    def run_time(self) -> str:
        """"26.3 min (preparation 9.1, search 12.0, delivery 5.2)", or "" before any was recorded."""
        if not self.run_seconds:
            return ""
        phases = ", ".join(f"{phase} {seconds / 60:.1f}" for phase, seconds in self.run_seconds.items())
        return f"{sum(self.run_seconds.values()) / 60:.1f} min ({phases})"

    def to_json(self) -> str:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data |= {"timing": asdict(self.timing), "reference_latency": asdict(self.reference_latency),
                 "searchers": {name: model.to_dict() for name, model in self.searchers.items()},
                 "dense": self.dense.to_dict(), "dense_int8": self.dense_int8.to_dict(),
                 "alternatives": {name: model.to_dict() for name, model in self.alternatives.items()},
                 "evaluated": {name: [e.to_json() for e in evaluated] for name, evaluated in self.evaluated.items()},
                 "floor": None if self.floor is None else self.floor.to_dict()}
        return json.dumps(data, indent=1)

    @classmethod
    def from_file(cls, path: Path) -> "CompressResult":
        data = read_versioned(path, "run result", RESULT_FORMAT, OUT_FOLDER, RUN_AGAIN, READABLE_RESULT_FORMATS)
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise UserError(f"{path} lacks the field {missing[0]!r}; {RUN_AGAIN}")
        try:
            return cls(**{**data, "timing": TimingSetup(**data["timing"]),
                          "reference_latency": LatencyResult(**data["reference_latency"]),
                          "searchers": {k: MeasuredModel.from_dict(v) for k, v in data["searchers"].items()},
                          "dense": MeasuredModel.from_dict(data["dense"]),
                          "dense_int8": MeasuredModel.from_dict(data["dense_int8"]),
                          "alternatives": {k: MeasuredModel.from_dict(v) for k, v in data.get("alternatives", {}).items()},
                          "evaluated": {k: [Evaluation.from_json(e) for e in v] for k, v in data.get("evaluated", {}).items()},
                          "floor": None if data.get("floor") is None else QualityFloor.from_dict(data["floor"])})
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise UserError(f"{path} does not match the result schema ({exc}); {RUN_AGAIN}") from None


TARGET_SET_FORMAT = "ppocompress.family/1"  # "family": the on-disk name (files.py)


@dataclass
class TargetSetResult:
    """A target set's run (`compress --targets ...`): one member per target, each delivered
    and measured in its own folder with its own result.json; TARGET_SET_FILE names them."""

    members: list[CompressResult]  # ascending targets
    folders: list[str]  # each member's folder in --out
    evaluations: dict[str, int]  # searcher -> plan evaluations over the whole target set
    policy: str | None  # folder of the saved search policy in --out, if a policy searcher ran
    format: str = TARGET_SET_FORMAT

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "folders": self.folders, "evaluations": self.evaluations,
                           "policy": self.policy}, indent=1)

    @classmethod
    def from_dir(cls, out: Path) -> "TargetSetResult":
        path = out / TARGET_SET_FILE
        data = read_versioned(path, "target set result", TARGET_SET_FORMAT, f"{OUT_FOLDER} --targets", RUN_AGAIN)
        missing = [name for name in ("folders", "evaluations", "policy") if name not in data]
        if missing:
            raise UserError(f"{path} lacks the field {missing[0]!r}; {RUN_AGAIN}")
        members = [CompressResult.from_file(out / folder / RESULT_FILE) for folder in data["folders"]]
        return cls(members, data["folders"], data["evaluations"], data["policy"])
