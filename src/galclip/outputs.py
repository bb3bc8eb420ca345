"""Output folders galclip owns: a command writes only into a folder that is new, empty, or its own earlier output,
and replaces only what it wrote there.

Each output folder carries a marker, ``.galclip-output.json`` (``{"command", "galclip"}``), written when the command
claims the folder. A folder is a command's own earlier output when its marker names that command, or (folders
written before markers existed) when every entry is a name that command writes. Anything else is refused, with
what the folder holds and the fix; ``overwrite`` is the user's explicit way through, and even then a command
replaces only the files of its own names: nothing galclip did not write is deleted.

A folder a refused or failed run created is removed again when it holds nothing but the marker, so refused runs
leave no empty folders.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from galclip.errors import GalclipError

MARKER = ".galclip-output.json"


class OutputExistsError(GalclipError):
    """An output path that holds something this command did not write."""


def is_temporary(name: str) -> bool:
    """galclip's own temporaries (``.NAME.tmp-PID@HOST``, ``.NAME.old-PID@HOST``, see :mod:`galclip.atomic`)."""
    return name.startswith(".") and (".tmp-" in name or ".old-" in name) and "@" in name


def read_marker(path: str | Path) -> dict | None:
    """The marker of folder ``path`` (None without one, or when it does not read as galclip's)."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) and "command" in marker else None


def owner(path: str | Path) -> str | None:
    """The galclip command whose output folder ``path`` is, by its marker (None: unmarked or not a folder)."""
    marker = read_marker(path) if Path(path).is_dir() else None
    return marker["command"] if marker else None


def foreign_entries(path: str | Path, names: Iterable[str]) -> list[str]:
    """Entries of folder ``path`` that are none of ``names`` (file names or glob patterns), the marker or a
    temporary of galclip's, sorted."""
    patterns = list(names)
    return sorted(
        e.name
        for e in Path(path).iterdir()
        if e.name != MARKER and not is_temporary(e.name) and not any(fnmatch.fnmatchcase(e.name, p) for p in patterns)
    )


def is_own_output(path: str | Path, command: str, names: Iterable[str]) -> bool:
    """Whether folder ``path`` is ``command``'s earlier output: its marker names ``command``, or (unmarked, as
    earlier galclip versions wrote it) it is not empty and holds only names ``command`` writes."""
    path = Path(path)
    if not path.is_dir():
        return False
    found = owner(path)
    if found is not None:
        return found == command
    entries = [e for e in path.iterdir() if not is_temporary(e.name)]
    return bool(entries) and not foreign_entries(path, names)


def _listing(path: Path, limit: int = 5) -> str:
    entries = sorted(e.name + ("/" if e.is_dir() else "") for e in path.iterdir() if not is_temporary(e.name))
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def check_output_dir(
    path: str | Path, command: str, names: Iterable[str], overwrite: bool = False, option: str = "OUT"
) -> None:
    """Refuse ``path`` as ``command``'s output folder unless it is missing, empty, ``command``'s own earlier output,
    or ``overwrite`` is given; the message names what the folder holds and the fix. Writes nothing."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputExistsError(
            f"{path}: is a file, but {option} of 'galclip {command}' is a folder; choose a new folder name"
        )
    if not any(not is_temporary(e.name) for e in path.iterdir()):
        return
    if is_own_output(path, command, names) or overwrite:
        return
    found = owner(path)
    what = f"the output of 'galclip {found}'" if found else f"{_listing(path)}, which 'galclip {command}' did not write"
    raise OutputExistsError(
        f"{path}: already holds {what}; 'galclip {command}' writes only into a new or empty folder or its own "
        f"earlier output. Choose another {option}, or pass --overwrite to write into it anyway (only the files "
        f"'galclip {command}' writes are replaced; nothing else is deleted)"
    )


def default_report_dir(out: Path) -> Path:
    """Where a catalogue's metrics.json (and, with truth, its report) go: ``<stem>_report/`` beside it."""
    return Path(out).with_name(Path(out).stem + "_report")


def write_marker(path: str | Path, command: str) -> None:
    """Mark folder ``path`` as ``command``'s output."""
    from galclip.atomic import atomic_write_text
    from galclip.version import __version__

    atomic_write_text(json.dumps({"command": command, "galclip": __version__}) + "\n", Path(path) / MARKER)


def remove_if_unused(path: str | Path) -> bool:
    """Remove folder ``path`` when it holds nothing but a marker and temporaries (what a run that created it and
    then failed before writing leaves); True when removed."""
    path = Path(path)
    if not path.is_dir():
        return False
    if any(e.name != MARKER and not is_temporary(e.name) for e in path.iterdir()):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


@contextmanager
def output_dir(
    path: str | Path, command: str, names: Iterable[str], overwrite: bool = False, option: str = "OUT"
) -> Iterator[Path]:
    """Claim ``path`` for ``command`` (:func:`check_output_dir`), create and mark it, and yield it. If the run fails
    and this call created the folder, it is removed again when nothing was written into it."""
    path = Path(path)
    names = list(names)
    check_output_dir(path, command, names, overwrite, option)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        write_marker(path, command)
        yield path
    except BaseException:
        if created:
            remove_if_unused(path)
        raise
