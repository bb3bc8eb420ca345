"""Atomic file writes: build a file under a temporary name in the same folder, then rename it.

A crash leaves the previous file or none, never half of one; the temporary names carry the writer's
PID, so the next writer removes what a killed one left (PIDs are checked on this host only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix) to write; on success fsync it if asked
    and rename it over ``path``; on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
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
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Clean up after writers of ``path`` that were killed (their PID no longer alive on this host):
    remove their ``.NAME.tmp-PID[.SUFFIX]`` files and folders; a ``.NAME.old-PID`` folder (killed between the two renames
    of ``atomic_dir``) is put back when ``path`` is missing, else removed. Returns what was removed."""
    import shutil

    path = Path(path)
    removed = []
    for tmp in sorted(path.parent.glob(f".{path.name}.*-*")):
        kind, _, tail = tmp.name[len(path.name) + 2:].partition("-")
        pid = tail[: len(tail) - len(path.suffix)] if path.suffix and tail.endswith(path.suffix) else tail
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not path.exists():
            os.replace(tmp, path)
            continue
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path`` to fill; on success swap it in place of ``path``
    (the previous folder is moved aside, then removed); on failure remove it. A crash leaves the previous
    folder (or, in the instant between two renames, none), never a mix of old and new files."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
