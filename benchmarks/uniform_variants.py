"""Uniform compression variants of the embedded all-MiniLM-L6-v2, measured side by side.

Drives `ppocompress bench` and keeps its table and JSON under benchmarks/results/.
Usage: python benchmarks/uniform_variants.py [extra ppocompress bench options]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    command = ["ppocompress", "bench", "--json", str(RESULTS / "uniform_variants.json"), *sys.argv[1:]]
    result = subprocess.run(command, capture_output=True, text=True, env={"COLUMNS": "140", **__import__("os").environ})
    sys.stderr.write(result.stderr)
    sys.stdout.write(result.stdout)
    if result.returncode == 0:
        (RESULTS / "uniform_variants.txt").write_text(result.stdout)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
