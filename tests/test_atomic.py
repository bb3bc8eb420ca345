"""Atomic writes: a failure mid-write leaves the previous file and no temporary file."""

from __future__ import annotations

from pathlib import Path

import pytest

from galclip.atomic import atomic_dir, atomic_path, atomic_write_text


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
    import socket

    from galclip.atomic import atomic_dir, remove_stale_temporaries

    host = socket.gethostname()
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
    (tmp_path / f".index.tmp-{dead}@{host}").mkdir()  # a writer on this host killed half-way
    (tmp_path / f".index.tmp-{dead}@another-node").mkdir()  # another host's writer: maybe alive, never touched
    (tmp_path / ".index.old-20240501").mkdir()  # a user's backup, not a galclip name
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".index.old-20240501",
        f".index.tmp-{dead}@another-node",
        "index",
    ]
    assert (target / "a").read_text() == "3"
    (tmp_path / f".rows.npz.tmp-{dead}@{host}.npz").write_text("half of a killed write")
    (tmp_path / f".rows.npz.tmp-{os.getpid()}@{host}.npz").write_text("a previous process with this pid")
    atomic_write_text("x", tmp_path / "rows.npz")
    assert not list(tmp_path.glob(".rows.npz.tmp-*"))
    # killed between the two renames: the previous folder is put back
    os.replace(target, tmp_path / f".index.old-{dead}@{host}")
    remove_stale_temporaries(target)
    assert (target / "a").read_text() == "3"
    # a symlinked target: the folder it points to is replaced, the link stays
    (tmp_path / "link").symlink_to(target)
    with atomic_dir(tmp_path / "link") as tmp:
        (tmp / "a").write_text("4")
    assert (tmp_path / "link").is_symlink() and (target / "a").read_text() == "4"


def test_atomic_dir_rolls_back_when_the_swap_fails(tmp_path, monkeypatch):
    import os

    from galclip.atomic import atomic_dir

    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    real = os.replace

    def fail_second(src, dst):
        if ".tmp-" in str(src):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"] and (target / "a").read_text() == "1"


def test_store_create_failure_leaves_nothing(tmp_path, monkeypatch):
    import numpy as np

    from galclip.store import FeatureStore

    meta = {
        "targetid": np.arange(4),
        "split": np.zeros(4, np.uint8),
        "label_redshift": np.zeros(4),
        "label_log_mstar": np.zeros(4),
    }

    def boom(tmp, *a, **k):  # fails half-way: the temporary folder exists and holds part of the store
        tmp.mkdir()
        (tmp / "zarr.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(FeatureStore, "_write_empty", staticmethod(boom))
    with pytest.raises(OSError):
        FeatureStore.create(tmp_path / "s.zarr", meta, {})
    assert list(tmp_path.iterdir()) == []


def test_output_dir_claims_only_new_empty_or_its_own_folders(tmp_path):
    from galclip.errors import GalclipError
    from galclip.outputs import MARKER, check_output_dir, is_own_output, output_dir, owner

    names = ("heads.pt", "*.png")
    with output_dir(tmp_path / "new", "heads", names) as out:  # new: created and marked
        (out / "heads.pt").write_bytes(b"x")
    assert owner(tmp_path / "new") == "heads" and (tmp_path / "new" / MARKER).exists()
    check_output_dir(tmp_path / "new", "heads", names)  # its own earlier output
    with pytest.raises(GalclipError, match="the output of 'galclip heads'.*--overwrite"):
        check_output_dir(tmp_path / "new", "evaluate", ("report.html",))
    (tmp_path / "legacy").mkdir()  # written before markers: only names the command writes
    (tmp_path / "legacy" / "heads.pt").write_bytes(b"x")
    (tmp_path / "legacy" / "loss.png").write_bytes(b"x")
    assert is_own_output(tmp_path / "legacy", "heads", names)
    (tmp_path / "legacy" / "thesis.tex").write_text("mine")
    assert not is_own_output(tmp_path / "legacy", "heads", names)
    with pytest.raises(GalclipError, match="heads.pt, loss.png, thesis.tex, which 'galclip heads' did not write"):
        check_output_dir(tmp_path / "legacy", "heads", names)
    check_output_dir(tmp_path / "legacy", "heads", names, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GalclipError, match="is a file"):
        check_output_dir(tmp_path / "file", "heads", names)
    with pytest.raises(RuntimeError):  # a run that fails before writing leaves no folder behind ...
        with output_dir(tmp_path / "a" / "b", "heads", names):
            raise RuntimeError("refused")
    assert not (tmp_path / "a" / "b").exists()
    with pytest.raises(RuntimeError):  # ... and one that wrote keeps what it wrote
        with output_dir(tmp_path / "c", "heads", names) as out:
            (out / "heads.pt").write_bytes(b"x")
            raise RuntimeError("diverged")
    assert (tmp_path / "c" / "heads.pt").exists()


def test_atomic_dir_merge_keeps_other_files_and_writes_the_last_one_last(tmp_path):
    target = tmp_path / "idx"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    (target / "index.json").write_text("old")
    (target / "a.npy").write_text("old")
    order = []
    import galclip.atomic as atomic_module

    real = atomic_module.os.replace

    def recording(src, dst):
        order.append(Path(dst).name)
        return real(src, dst)

    atomic_module.os.replace = recording
    try:
        with atomic_dir(target, merge_last="index.json") as tmp:
            (tmp / "index.json").write_text("new")
            (tmp / "a.npy").write_text("new")
            (tmp / "b.npy").write_text("new")
    finally:
        atomic_module.os.replace = real
    assert order[-1] == "index.json"
    assert {p.name: p.read_text() for p in target.iterdir()} == {
        "mine.txt": "keep",
        "index.json": "new",
        "a.npy": "new",
        "b.npy": "new",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]
