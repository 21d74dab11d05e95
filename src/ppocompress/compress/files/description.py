"""compression.json, the description beside a saved compressed model's weights: what tells
a delivered folder from a Hugging Face one, and which dense model it came from."""

from __future__ import annotations

from pathlib import Path

from ppocompress.errors import UserError
from ppocompress.fileio import read_json_object

FORMAT = "ppocompress.compress/1"
DESCRIPTION = "compression.json"  # beside the weights: the plan, the dense config, the source


def is_saved_model(directory: Path) -> bool:
    """A folder written by save() (a delivered model), not a Hugging Face one."""
    return (Path(directory) / DESCRIPTION).is_file()


def saved_source(directory: Path) -> str:
    """The --model a saved model was compressed from, as that run was given it."""
    return read_description(Path(directory))["source"]


def read_description(directory: Path) -> dict:
    path = directory / DESCRIPTION
    meta = read_json_object(path, "model description", f"{directory} is not a saved compressed model (no {DESCRIPTION}); "
                            "pass a directory written by ppocompress")
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} has format {meta.get('format')!r}; this version reads {FORMAT}")
    return meta
