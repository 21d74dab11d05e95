"""What a long search keeps on disk so that an interrupted run resumes where it stopped.

The state is every plan evaluation made so far (plan -> reward), the results of the
searchers that finished, and the preparation's one-off measurements. Evaluations are the
expensive part and are deterministic; the searchers are seeded. So a resumed run replays
each searcher from the start with its seed, the evaluations it had already made come back
from the cache instantly, and the run continues where it stopped and ends with exactly the
plan an uninterrupted run ends with. Written atomically (temporary file, then rename)
every few evaluations.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text
from ppocompress.search.files import read_versioned
from ppocompress.search.plan import Plan
from ppocompress.search.recorder import SearchResult

STATE_FORMAT_NAME = "ppocompress.search-state/"  # then the version
STATE_FORMAT = STATE_FORMAT_NAME + "2"
START_AFRESH = "start without --resume"


@dataclass
class Measurements:
    """The preparation's one-off measurements (prepare.py), each taken once: None or empty
    until it is. A table measured row by row holds the rows measured so far."""

    importance: list[dict] | None = None  # LayerImportance.to_dict() of each layer
    importance_seconds: float | None = None  # what importance scoring took (it scales the duration estimate)
    runtime: str | None = None  # the serving runtime, once chosen
    dense_ms: dict[str, float] | None = None  # the dense variants timed side by side (prepare.time_dense_variants)
    sensitivity: list[list[float]] = field(default_factory=list)  # evaluator.sensitivity_table's rows
    sensitivity_baseline: float | None = None  # quality lost by the plan every plan starts from
    drop_pairs: list[list[float]] = field(default_factory=list)  # evaluator.drop_pair_table's rows
    run_seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase finished so far

    def taken(self) -> bool:
        """Whether any measurement was taken (a later --resume would skip it)."""
        return any(getattr(self, f.name) not in (None, [], {}) for f in fields(self))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Measurements":
        """TypeError for a field this version does not know."""
        return cls(**data)


@dataclass
class SearchState:
    settings: dict  # what the run was asked for (CompressSettings as a dict); a resume must ask for the same
    evaluations: dict[Plan, float] = field(default_factory=dict)  # plan -> reward
    finished: dict[str, SearchResult] = field(default_factory=dict)  # "searcher" or "searcher target" -> its result
    measurements: Measurements = field(default_factory=Measurements)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({
            "format": STATE_FORMAT, "settings": self.settings,
            "evaluations": {plan.key(): reward for plan, reward in self.evaluations.items()},
            "finished": {key: result.to_dict() for key, result in self.finished.items()},
            "measurements": self.measurements.to_dict()}))

    @classmethod
    def load(cls, path: Path) -> "SearchState":
        data = read_versioned(path, "search state", STATE_FORMAT, START_AFRESH)
        for name in ("settings", "evaluations", "finished", "measurements"):
            if not isinstance(data.get(name), dict):
                raise UserError(f"{path} lacks the field {name!r} (or it is not an object); {START_AFRESH}")
        try:
            return cls(data["settings"], {Plan.from_key(key): float(reward) for key, reward in data["evaluations"].items()},
                       {key: SearchResult.from_dict(result) for key, result in data["finished"].items()},
                       Measurements.from_dict(data["measurements"]))
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"{path} does not match the search state's schema ({exc}); {START_AFRESH}") from None
