"""Marks: which galaxies a person called "more like this" (positive) or "not this" (negative).

The page keeps them in the browser and downloads them as one of two small files, which ``galclip rank --positive``
reads back (as does the page's upload):

- JSON: ``{"format": "galclip-marks/1", "index": <the index folder's name>, "positive": ["<targetid>", ...],
  "negative": [...]}``. Targetids are strings: they exceed 2**53, which a JavaScript number cannot hold exactly.
- CSV: a header ``targetid,mark``, then one row per galaxy, ``mark`` being ``positive`` or ``negative``.

A plain text file of one targetid per line (``#`` comments and blank lines allowed) is a list of ids. Anything
else is refused, naming the file and what a marks file looks like.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

from galclip.errors import InputError

FORMAT = "galclip-marks/1"
MARKS = ("positive", "negative")
CSV_HEADER = ("targetid", "mark")
MAX_BYTES = 16 << 20  # a marks file is small: a few thousand ids at most
_INTEGER = re.compile(r"^-?[0-9]{1,19}$")  # ASCII digits of an int64
_LOOKS = (
    f'a galclip marks file (JSON {{"format": "{FORMAT}", "positive": [...], "negative": [...]}}, or CSV with the '
    "header targetid,mark) or one targetid per line"
)


@dataclass(frozen=True)
class Marks:
    """Marked targetids, each in the order first marked, no repeats."""

    positive: tuple[int, ...] = ()
    negative: tuple[int, ...] = ()

    def check(self) -> None:
        """Refuse a galaxy marked both ways."""
        both = sorted(set(self.positive) & set(self.negative))
        if both:
            raise InputError(
                f"targetid {both[0]} is marked both positive and negative"
                + (f" ({len(both) - 1} more are)" if len(both) > 1 else "")
                + "; remove one of its marks"
            )


def is_targetid(text: str) -> bool:
    """Whether ``text`` is a targetid: an integer of ASCII digits that fits in int64."""
    text = text.strip()
    return bool(_INTEGER.match(text)) and -(2**63) <= int(text) < 2**63


def _targetid(value: object, where: str) -> int:
    text = str(value).strip()[:40]
    if isinstance(value, bool) or not is_targetid(text):
        raise InputError(f"{where}: {text!r} is not a targetid (an integer that fits in 64 bits)")
    return int(text)


def _unique(ids: list[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(ids))


def parse_ids(text: str, option: str) -> tuple[int, ...]:
    """Comma-separated targetids (``option`` names where they came from in errors)."""
    items = [t for t in (s.strip() for s in text.split(",")) if t]
    if not items:
        raise InputError(f"{option}: no targetid given; pass comma-separated targetids or a file")
    return _unique([_targetid(t, option) for t in items])


def marks_from_text(text: str, name: str) -> Marks | tuple[int, ...]:
    """A marks file's content (``name`` for errors): its Marks, or for a list of ids the ids."""
    stripped = text.lstrip("\ufeff").strip()
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise InputError(f"{name}: not valid JSON ({err.msg}, line {err.lineno}); expected {_LOOKS}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise InputError(f'{name}: a JSON file that is not a galclip marks file (no "format": "{FORMAT}")')
        lists = {}
        for mark in MARKS:
            values = record.get(mark, [])
            if not isinstance(values, list):
                raise InputError(f"{name}: {mark!r} must be a list of targetids")
            lists[mark] = _unique([_targetid(v, f"{name}: {mark}") for v in values])
        return Marks(lists["positive"], lists["negative"])
    lines = [ln.strip() for ln in stripped.splitlines()]
    if lines and [c.strip().lower() for c in lines[0].split(",")] == list(CSV_HEADER):
        lists = {m: [] for m in MARKS}
        for i, row in enumerate(csv.reader(io.StringIO("\n".join(lines[1:]))), start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2 or row[1].strip().lower() not in MARKS:
                raise InputError(f"{name}: line {i} {','.join(row)!r}: expected targetid,positive|negative")
            lists[row[1].strip().lower()].append(_targetid(row[0], f"{name}: line {i}"))
        return Marks(_unique(lists["positive"]), _unique(lists["negative"]))
    ids = []
    for i, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not is_targetid(line):
            raise InputError(f"{name}: line {i} {line[:40]!r} is not a targetid; expected {_LOOKS}")
        ids.append(int(line))
    if not ids:
        raise InputError(f"{name}: holds no targetid; expected {_LOOKS}")
    return _unique(ids)


def read_marks_file(path: str | Path) -> Marks | tuple[int, ...]:
    """A marks file or id list on disk (see :func:`marks_from_text`)."""
    path = Path(path)
    if path.stat().st_size > MAX_BYTES:
        raise InputError(f"{path}: {path.stat().st_size} bytes is too large for a marks file; expected {_LOOKS}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file; expected {_LOOKS}") from None
    return marks_from_text(text, str(path))


def ids_argument(value: str, option: str) -> Marks:
    """What ``--positive`` or ``--negative`` was given: a marks file (both its lists), a file of ids, or
    comma-separated ids (the ids, as that option's marks)."""
    path = Path(value)
    if not path.is_file() and not all(is_targetid(t) for t in value.split(",") if t.strip()):
        raise InputError(f"{option} {value}: no such file, and not comma-separated targetids")
    got = read_marks_file(path) if path.is_file() else parse_ids(value, option)
    if isinstance(got, Marks):
        return got
    return Marks(positive=got) if option == "--positive" else Marks(negative=got)


def combine(*marks: Marks) -> Marks:
    """The union of several marks, in order."""
    return Marks(
        _unique([t for m in marks for t in m.positive]),
        _unique([t for m in marks for t in m.negative]),
    )


def marks_json(marks: Marks, index_name: str) -> str:
    """The JSON marks file's text."""
    record = {
        "format": FORMAT,
        "index": index_name,
        "positive": [str(t) for t in marks.positive],
        "negative": [str(t) for t in marks.negative],
    }
    return json.dumps(record, indent=1) + "\n"


def marks_csv(marks: Marks) -> str:
    """The CSV marks file's text."""
    lines = [",".join(CSV_HEADER)]
    lines += [f"{t},positive" for t in marks.positive] + [f"{t},negative" for t in marks.negative]
    return "\n".join(lines) + "\n"
