"""The files a `compress` run keeps in its --out folder, by name, and how a versioned one
is read back.

On disk a run over a target set (`--targets 2,3,4`) keeps the name users know it by, a
family: family.json, family_pareto.png and family_plans.png. The code calls it a target
set, since a model family is an architecture (compress/models/families.py).
"""

from __future__ import annotations

from pathlib import Path

from ppocompress.errors import UserError
from ppocompress.fileio import read_json_object

RESULT_FILE = "result.json"  # a delivered model's measurements (results.CompressResult)
STATE_FILE = "state.json"  # what --resume continues from (state.SearchState)
REPORT_FILE = "report.html"
TARGET_SET_FILE = "family.json"  # a target set's members (results.TargetSetResult)
POLICY_DIR = "policy"  # the saved search policy, for --policy (policy.py)
RECOVERY_CHECKPOINTS = ".recovery"  # each distillation's checkpoint, until the model is delivered

OUT_FOLDER = "pass the --out folder of ppocompress compress"
RUN_AGAIN = "run ppocompress compress again"


def read_versioned(path: Path, what: str, expected_format: str, hint: str, other_format_hint: str | None = None,
                   readable: tuple[str, ...] = ()) -> dict:
    """The JSON object in `path`, written in `expected_format` (or an older one in `readable`,
    returned as `expected_format`); else a one-line UserError naming `what` the file should
    be, ending with `hint` (other_format_hint, if given, for a file of another format)."""
    data = read_json_object(path, what, hint)
    if data.get("format") in readable:
        data["format"] = expected_format
    if data.get("format") != expected_format:
        raise UserError(f"{path} is not a {what} this version reads (format {data.get('format')!r}, "
                        f"expected {expected_format}); {other_format_hint or hint}")
    return data
