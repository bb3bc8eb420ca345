"""Atomic writes: build a file or folder under a temporary name in the same folder, then rename it.

A crash leaves the previous file or none, never half of one. Temporary names carry the writer's
PID and host (``.NAME.tmp-PID@HOST[.SUFFIX]``), so the next writer removes what a killed writer on
the same host left, and never touches a temporary of a writer on another host sharing the disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def temporary_name(path: Path, kind: str = "tmp", suffix: str = "") -> Path:
    """``.NAME.KIND-PID@HOST[SUFFIX]`` beside ``path``."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}@{_host()}{suffix}")


def fsync_path(path: str | Path) -> None:
    """fsync one file or folder (a folder's fsync makes the renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def naming_os_errors(path: str | Path) -> Iterator[None]:
    """Give an OSError raised inside (a failed write: no space, read-only, ...) ``path`` as its filename when it
    names none, so the one-line fault message says where."""
    import errno

    try:
        yield
    except OSError as err:
        if err.filename is None and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise


def reserve_space(path: str | Path, n_bytes: int | None = None, name: str | Path | None = None) -> None:
    """Allocate ``n_bytes`` (default: the file's current size) of the file at ``path`` on disk now (created if
    missing), so a full disk or quota is an OSError naming ``name`` (default ``path``) here, not a crash later: a
    SIGBUS when a memory map of a sparse file is written, or HDF5, which can segfault on a full disk (it truncates
    and refills the reserved file). File systems without fallocate compare the free space instead."""
    import errno

    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size if n_bytes is None else int(n_bytes)
        os.posix_fallocate(fd, 0, max(1, size))
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(err.errno, err.strerror, str(name or path)) from err
        if shutil.disk_usage(Path(path).parent).free < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(name or path)) from err
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write; on success fsync it if asked
    and rename it over ``path``; on failure remove it. A write that fails on a full disk or a read-only file
    system names ``path``."""
    given = path
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path, suffix=path.suffix)
    try:
        with naming_os_errors(given):
            yield tmp
            if fsync:
                fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # alive but someone else's, or not a pid: leave it
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Clean up after writers of ``path`` killed on this host (their PID no longer alive): remove their
    ``.NAME.tmp-PID@HOST[SUFFIX]`` files and folders. A ``.NAME.old-PID@HOST`` folder (an ``atomic_dir``
    writer killed between its two renames) is put back when ``path`` is missing, else removed.
    Names of any other form, and those of other hosts, are never touched. Returns what was removed.

    Called by a writer before it makes its own temporary, so an entry with this process's PID is a
    previous process's (PIDs are reused, e.g. in containers)."""
    path = Path(path)
    suffix = f"({re.escape(path.suffix)})?" if path.suffix else ""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(tmp|old)-(\d{{1,10}})@{re.escape(_host())}{suffix}")
    removed = []
    for entry in sorted(path.parent.glob(f".{glob_escape(path.name)}.*-*@*")):
        match = pattern.fullmatch(entry.name)
        if not match:
            continue
        kind, pid = match.group(1), int(match.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        if kind == "old":
            if not entry.is_dir():
                continue
            if not path.exists():
                os.replace(entry, path)
                continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextmanager
def atomic_dir(path: str | Path, merge_last: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` to fill; on success swap it in place of ``path``
    (the previous folder is moved aside, then removed); on failure remove it. A crash leaves the previous
    folder (or, killed in the instant between two renames, ``.NAME.old-…``, which the next writer puts
    back), never a mix of old and new files. A symlinked ``path`` is resolved: its target is swapped. A write
    inside that fails on a full disk or a read-only file system names ``path``.

    With ``merge_last`` (a file name) an existing ``path`` is kept and only the files written are renamed into it,
    that one first removed and renamed in last: other entries of ``path`` (a user's files) are never touched, and
    a crash in between leaves a folder whose ``merge_last`` is missing, so no reader takes it for whole."""
    given = path
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        with naming_os_errors(given):
            yield tmp
        if merge_last is not None and path.is_dir():
            (path / merge_last).unlink(missing_ok=True)
            for entry in sorted(tmp.iterdir(), key=lambda e: e.name == merge_last):
                os.replace(entry, path / entry.name)
            return
        old = temporary_name(path, "old")
        moved = path.exists()
        if moved:
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if moved:
                os.replace(old, path)  # roll back: the previous folder returns
            raise
        if moved:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(obj: object, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically: the one JSON writer of every metrics and sidecar file
    (``json_ready`` first, so numpy values are plain and NaN is null)."""
    return atomic_write_text(json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n", path)


def json_ready(obj: object) -> object:
    """Nested numpy/python values -> plain JSON types: arrays to lists, numpy scalars to Python, NaN and inf to
    None (JSON has no NaN), paths to strings."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj
