"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ppocompress.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp and mkdtemp create files and folders for the owner only; finished ones get the usual modes.
_FILE_MODE = 0o666 & ~_current_umask()
_DIR_MODE = 0o777 & ~_current_umask()


TMP_SUFFIX = ".tmp"  # ends the name of an atomic write's temporary file, by which remove_leftovers knows it


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
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


STAGING = ".staging-"  # in the name of a folder whose work is moved into place when done
SET_ASIDE = ".old-"  # in the name of what move_into_place renamed aside


def staging_dir(parent: Path, name: str = "") -> Path:
    """A new hidden folder in `parent` for work that is moved into place when it is done
    (remove_leftovers knows it by its name)."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f".{name}{STAGING}" if name else STAGING))
    folder.chmod(_DIR_MODE)
    return folder


def move_into_place(source: Path, destination: Path) -> None:
    """Renames a finished file or directory onto `destination`, replacing what was there;
    the old one is renamed aside first, so at no moment is `destination` half-written
    (a kill between the two renames leaves the old one aside, and remove_leftovers puts
    it back)."""
    if not destination.exists():
        os.replace(source, destination)
        return
    old = destination.with_name(f".{destination.name}{SET_ASIDE}{os.getpid()}")
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


WRITE_PROBE = ".write-test-"


def writable_dir(path: Path, option: str = "--out") -> None:
    """Creates the output folder `path`, or fails now, before any work is spent on a run
    whose results could not be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=WRITE_PROBE)
        probe.close()
    except OSError as exc:
        raise UserError(f"cannot write to {option} {path} ({exc.strerror}); choose another {option}") from None


_SET_ASIDE_NAME = re.compile(rf"^\.(.+){re.escape(SET_ASIDE)}\d+$")


def remove_leftovers(folder: Path) -> list[Path]:
    """Clears what runs killed in `folder` (or below) left: staging folders, temporary
    files of atomic writes, write probes; an old file or folder renamed aside is put back
    if its replacement never arrived, else removed. Call it holding the folder's run_lock.
    Returns what it removed or restored."""
    handled = []
    for path in sorted(Path(folder).rglob(".*"), key=lambda p: len(p.parts), reverse=True):
        name = path.name
        if STAGING in name and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif (name.endswith(TMP_SUFFIX) or name.startswith(WRITE_PROBE)) and path.is_file():
            path.unlink(missing_ok=True)
        elif (match := _SET_ASIDE_NAME.match(name)) is not None:
            original = path.with_name(match.group(1))
            if original.exists():
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            else:
                os.replace(path, original)
        else:
            continue
        handled.append(path)
    return handled


LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(folder: Path, option: str = "--out") -> Iterator[None]:
    """Holds folder/.lock for one run: a second run into the same folder fails at once.
    An flock is released by the kernel when its process ends, however it ends (kill -9
    included), so a lock file left by a dead run is taken over, never in the way; the
    file tells a refused run who holds it, and goes when the run ends."""
    path = Path(folder) / LOCK_FILE
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise UserError(f"another ppocompress run (process {owner}) is writing to {folder}; "
                            f"wait for it to finish, or choose another {option}") from None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # the run that held it removed it while this one opened it: take the new file
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked, so no run can be holding this file
        handle.close()


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Holds an flock on the file `path` for the block, waiting while another process holds
    it (the kernel releases a dead process's lock, so a killed holder never blocks)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def output_dir(folder: Path, option: str = "--out", keep: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """A run's output folder for the block: made writable (writable_dir) and held
    (run_lock); if the block fails, a folder it created goes too, unless keep() says it
    holds work worth resuming."""
    folder = Path(folder)
    created = not folder.exists()
    writable_dir(folder, option)
    try:
        with run_lock(folder, option):
            yield
    except BaseException:
        if created and not keep():
            shutil.rmtree(folder, ignore_errors=True)
        raise
