"""What a long search keeps on disk so that an interrupted run resumes where it stopped.

The state is every plan evaluation made so far (plan -> reward) and the results of the
searchers that finished. Evaluations are the expensive part and are deterministic; the
searchers are seeded. So a resumed run replays each searcher from the start with its
seed, the evaluations it had already made come back from the cache instantly, and the
run continues where it stopped and ends with exactly the plan an uninterrupted run ends
with. Written atomically (temporary file, then rename) every few evaluations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ppocompress.errors import UserError
from ppocompress.fileio import atomic_write_text, read_json_object

STATE_FORMAT = "ppocompress.search-state/1"


@dataclass
class SearchState:
    settings: dict  # what the run was asked for; a resume must ask for the same
    evaluations: dict[str, float] = field(default_factory=dict)  # "3,0,5,..." -> reward
    finished: dict[str, dict] = field(default_factory=dict)  # searcher -> SearchResult.to_dict()
    extras: dict = field(default_factory=dict)  # one-off measurements (sensitivity, cost table)

    @staticmethod
    def key(levels: list[int]) -> str:
        return ",".join(str(level) for level in levels)

    @staticmethod
    def levels(key: str) -> list[int]:
        return [int(level) for level in key.split(",")]

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps({"format": STATE_FORMAT, "settings": self.settings, "evaluations": self.evaluations,
                                            "finished": self.finished, "extras": self.extras}))

    @classmethod
    def load(cls, path: Path) -> "SearchState":
        data = read_json_object(path, "search state", "start without --resume")
        if data.get("format") != STATE_FORMAT:
            raise UserError(f"{path} is not a search state this version reads (format {data.get('format')!r}); "
                            "start without --resume")
        for name in ("settings", "evaluations", "finished", "extras"):
            if not isinstance(data.get(name), dict):
                raise UserError(f"{path} lacks the field {name!r} (or it is not an object); start without --resume")
        return cls(data["settings"], data["evaluations"], data["finished"], data["extras"])
