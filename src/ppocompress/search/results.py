"""What `ppocompress compress` delivers, as typed records: written to result.json, read by
the terminal summary, the report and the benchmarks (one schema, no keys built up)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from ppocompress.compress.measure.quality import HeldOutQuality
from ppocompress.compress.measure.timing import LatencyResult, TimingSetup
from ppocompress.compress.recovery.distillation import DistillReport
from ppocompress.errors import UserError
from ppocompress.fileio import read_json_object
from ppocompress.search.env import Target

RESULT_FORMAT = "ppocompress.result/2"


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
    levels: list[str] | None = None  # menu level per layer; None for the dense models
    plan: dict | None = None
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

    @classmethod
    def from_dict(cls, data: dict) -> "MeasuredModel":
        distillation = data.get("distillation")
        return cls(**{**data, "latency": LatencyResult(**data["latency"]),
                      "distillation": None if distillation is None else DistillReport.from_dict(distillation)})


def quality_columns(causal: bool, detailed: bool = False) -> list[tuple[str, str, str]]:
    """(header, MeasuredModel field, format) of the held-out quality a summary shows;
    detailed adds the ones only the report has room for."""
    if causal:
        return [("KL", "kl_heldout", ".4f"), ("ppl", "perplexity_heldout", ".2f"), ("top-1", "top1_agreement", ".3f")]
    return [("cosine", "cosine_heldout", ".4f"), *([("min cosine", "cosine_heldout_min", ".4f")] if detailed else []),
            ("Lee", "lee_pearson", ".3f")]


@dataclass
class CompressResult:
    model: str
    runtime: str  # where the delivered model is served and the search priced plans
    target_kind: str  # "speedup" or "size"
    target_value: float
    searcher: str  # whose plan was delivered
    timing: TimingSetup
    reference_latency: LatencyResult  # dense PyTorch fp32, same rounds
    dense_lee_pearson: float | None  # encoders
    dense_size_bytes: int  # dense safetensors
    searchers: dict[str, MeasuredModel]  # every searcher's best plan, delivered and measured
    dense: MeasuredModel  # dense, the runtime's default precision
    dense_int8: MeasuredModel  # dense, the runtime's int8: the no-effort alternative
    sensitivity_evaluations: int  # shared by all searchers and outside their budgets
    latency_table: dict | None = None  # runtime and largest error on mixed plans; None for FLOPs
    curves: dict[str, list] = field(default_factory=dict)  # searcher -> [(evaluations, best reward)]
    evaluated: dict[str, list] = field(default_factory=dict)  # searcher -> [(levels, reward, predicted speedup)]
    warnings: list[str] = field(default_factory=list)
    generations: dict[str, list[str]] = field(default_factory=dict)  # causal LMs: "prompts", "dense", the delivered
    # Wall time of "preparation", "search" and this model's "delivery", summed over resumed
    # attempts (a killed attempt's unfinished phase is not counted).
    run_seconds: dict[str, float] = field(default_factory=dict)
    format: str = RESULT_FORMAT

    @property
    def causal(self) -> bool:
        return self.dense.kl_heldout is not None

    @property
    def fidelity_name(self) -> str:
        """What MeasuredModel.fidelity and the search's rewards measure."""
        return "exp(-KL) of next-token distributions" if self.causal else "cosine of embeddings"

    @property
    def target_label(self) -> str:
        """"4x" or "size 0.5"."""
        return Target(self.target_kind, self.target_value).label

    @property
    def delivered(self) -> MeasuredModel:
        return self.searchers[self.searcher]

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
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_file(cls, path: Path) -> "CompressResult":
        data = read_json_object(path, "run result", "pass the --out folder of ppocompress compress")
        if data.get("format") != RESULT_FORMAT:
            raise UserError(f"{path} is not a result this version reads (format {data.get('format')!r}, "
                            f"expected {RESULT_FORMAT}); run ppocompress compress again")
        missing = [f.name for f in fields(cls) if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise UserError(f"{path} lacks the field {missing[0]!r}; run ppocompress compress again")
        try:
            return cls(**{**data, "timing": TimingSetup(**data["timing"]), "reference_latency": LatencyResult(**data["reference_latency"]),
                          "searchers": {k: MeasuredModel.from_dict(v) for k, v in data["searchers"].items()},
                          "dense": MeasuredModel.from_dict(data["dense"]), "dense_int8": MeasuredModel.from_dict(data["dense_int8"])})
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise UserError(f"{path} does not match the result schema ({exc}); run ppocompress compress again") from None


FAMILY_FORMAT = "ppocompress.family/1"


@dataclass
class FamilyResult:
    """A family run (`compress --targets ...`): one member per target, each delivered and
    measured in its own folder with its own result.json; family.json names them."""

    members: list[CompressResult]  # ascending targets
    folders: list[str]  # each member's folder in --out
    evaluations: dict[str, int]  # searcher -> plan evaluations over the whole family
    policy: str | None  # folder of PPO's saved policy in --out, if PPO ran
    format: str = FAMILY_FORMAT

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "folders": self.folders, "evaluations": self.evaluations, "policy": self.policy},
                          indent=1)

    @classmethod
    def from_dir(cls, out: Path) -> "FamilyResult":
        data = read_json_object(out / "family.json", "family result", "pass the --out folder of ppocompress compress --targets")
        if data.get("format") != FAMILY_FORMAT:
            raise UserError(f"{out / 'family.json'} is not a family result this version reads (format {data.get('format')!r}); "
                            "run ppocompress compress again")
        missing = [name for name in ("folders", "evaluations", "policy") if name not in data]
        if missing:
            raise UserError(f"{out / 'family.json'} lacks the field {missing[0]!r}; run ppocompress compress again")
        members = [CompressResult.from_file(out / folder / "result.json") for folder in data["folders"]]
        return cls(members, data["folders"], data["evaluations"], data["policy"])
