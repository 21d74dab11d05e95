"""Atomic writes and moves: no half-written output, whatever fails."""

from __future__ import annotations

import os
import stat

import pytest

from ppocompress.errors import UserError
from ppocompress.fileio import (
    SET_ASIDE,
    atomic_path,
    atomic_write_text,
    move_into_place,
    remove_leftovers,
    staging_dir,
    writable_dir,
)


def test_atomic_path_leaves_the_old_file_when_the_block_fails(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.parametrize("existing", ["none", "file", "directory"])
def test_move_into_place_replaces_files_and_directories(tmp_path, existing):
    source = tmp_path / "staging"
    source.mkdir()
    (source / "weights").write_text("new")
    destination = tmp_path / "model"
    if existing == "file":
        destination.write_text("old")
    elif existing == "directory":
        destination.mkdir()
        (destination / "stale").write_text("old")
    move_into_place(source, destination)
    assert sorted(p.name for p in destination.iterdir()) == ["weights"]
    assert (destination / "weights").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # nothing left aside


def test_remove_leftovers_clears_what_killed_runs_left_and_restores_what_was_set_aside(tmp_path):
    """As a kill -9 leaves a folder: a delivery's staging folder, an export's staging folder
    beside its target, an atomic write's temporary file, and a model renamed aside by
    move_into_place whose replacement never arrived (the kill fell between the renames)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_text("previous model")
    member = tmp_path / "target-4x"
    member.mkdir()
    (staging_dir(tmp_path) / "half").write_text("x")
    (staging_dir(member, "model") / "half").write_text("x")
    (tmp_path / ".result.json.abc123.tmp").write_text("{")
    os.replace(tmp_path / "model", tmp_path / f".model{SET_ASIDE}4242")  # the first rename of move_into_place
    (member / "result.json").write_text("done")
    (member / f".result.json{SET_ASIDE}77").write_text("older")  # its replacement did arrive
    removed = remove_leftovers(tmp_path)
    assert len(removed) == 5
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "model", "model/weights", "target-4x", "target-4x/result.json"]
    assert (tmp_path / "model" / "weights").read_text() == "previous model"
    assert remove_leftovers(tmp_path) == []


def test_writable_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        writable_dir(tmp_path / "f")
    writable_dir(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper").is_dir() and not list((tmp_path / "new" / "deeper").iterdir())


def test_finished_files_and_folders_get_the_usual_modes_not_the_owner_only_ones_of_temporary_files(tmp_path):
    """A delivered model/ was drwx------: tempfile's mode for a staging folder, kept by the rename."""
    umask = os.umask(0)
    os.umask(umask)
    folder = staging_dir(tmp_path, "model")
    atomic_write_text(folder / "weights", "w")
    move_into_place(folder, tmp_path / "model")
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "model" / "weights").stat().st_mode) == 0o666 & ~umask
