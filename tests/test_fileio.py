"""Atomic writes and moves: no half-written output, whatever fails."""

from __future__ import annotations

import pytest

from ppocompress.fileio import atomic_path, atomic_write_text, move_into_place


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
