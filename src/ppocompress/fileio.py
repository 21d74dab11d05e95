"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ppocompress.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; finished files get the usual mode.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def cache_dir() -> Path:
    """Where converted models and latency tables are kept between runs ($PPOCOMPRESS_CACHE
    overrides ~/.cache/ppocompress)."""
    return Path(os.environ.get("PPOCOMPRESS_CACHE", Path.home() / ".cache" / "ppocompress"))


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def move_into_place(source: Path, destination: Path) -> None:
    """Renames a finished file or directory onto `destination`, replacing what was there;
    the old one is renamed aside first, so at no moment is `destination` half-written."""
    if not destination.exists():
        os.replace(source, destination)
        return
    old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    os.replace(destination, old)
    os.replace(source, destination)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def read_json_object(path: str | Path, what: str, hint: str) -> dict:
    """A JSON object from a file the user named, or a one-line UserError saying what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist; {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON ({exc}); {hint}") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} must hold a JSON object; {hint}")
    return data
