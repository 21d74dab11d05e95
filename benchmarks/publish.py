"""Where every benchmark's latest output goes: printed, and kept as text and JSON under results/."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def publish(name: str, text: str, data) -> None:
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text.rstrip("\n") + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=1))
