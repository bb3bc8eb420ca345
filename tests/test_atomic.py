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


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # finished and reaped: no process has this pid (until it is reused)


def test_atomic_dir_swaps_whole_folders_and_cleans_up_after_killed_writers(tmp_path):
    import os

    from galclip.atomic import atomic_dir

    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            (tmp / "b").write_text("2")
            raise RuntimeError("crash")
    assert sorted(p.name for p in target.iterdir()) == ["a"] and (target / "a").read_text() == "1"
    dead = _dead_pid()
    (tmp_path / f".index.tmp-{dead}").mkdir()  # a writer killed half-way
    (tmp_path / f".index.tmp-{os.getpid() + 10**7}").mkdir()  # an impossible pid is not alive either
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"] and (target / "a").read_text() == "3"
    (tmp_path / f".rows.npz.tmp-{dead}.npz").write_text("half of a killed write")
    atomic_write_text("x", tmp_path / "rows.npz")
    assert not (tmp_path / f".rows.npz.tmp-{dead}.npz").exists()
    (tmp_path / "rows.npz").unlink()
    # killed between the two renames: the previous folder is put back
    os.replace(target, tmp_path / f".index.old-{dead}")
    from galclip.atomic import remove_stale_temporaries

    remove_stale_temporaries(target)
    assert (target / "a").read_text() == "3"


def test_store_create_failure_leaves_nothing(tmp_path, monkeypatch):
    import numpy as np

    from galclip.store import FeatureStore

    meta = {"targetid": np.arange(4), "split": np.zeros(4, np.uint8), "label_redshift": np.zeros(4),
            "label_log_mstar": np.zeros(4)}
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(FeatureStore, "_write_empty", staticmethod(boom))
    with pytest.raises(OSError):
        FeatureStore.create(tmp_path / "s.zarr", meta, {})
    assert list(tmp_path.iterdir()) == []
