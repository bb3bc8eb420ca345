"""Atomic writes: a failure mid-write leaves the previous file and no temporary file."""

from __future__ import annotations

import pytest

from galclip.atomic import atomic_path, atomic_write_text


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "rows.npz"
    atomic_write_text("old", target)
    with pytest.raises(RuntimeError):
        with atomic_path(target, fsync=True) as tmp:
            assert tmp.suffix == ".npz" and tmp.parent == tmp_path
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.npz"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1
