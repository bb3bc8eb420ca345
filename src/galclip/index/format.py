"""The index folder's format: its file names and version, its sidecar ``index.json``, and ``verify``.

``galclip index`` writes the folder (:mod:`galclip.index.build`); every reader opens it through this module
(:mod:`galclip.index.search`, ``galclip check``). The sidecar (format 3) records the size and SHA-256 of every
other file and its own SHA-256 (``sidecar_sha256``, over its canonical JSON without that field).
"""

from __future__ import annotations

import json
from pathlib import Path

from galclip.atomic import write_json
from galclip.errors import DamagedDataError, GalclipError
from galclip.provenance import canonical_sha256, sha256_file
from galclip.vocabulary import MODALITIES

NAME = "index"
FORMAT = "galclip-index/3"  # 3: file sizes and SHA-256s, its own SHA-256, relative paths
READABLE_FORMATS = ("galclip-index/2", FORMAT)
SIDECAR = "index.json"
ROWS_FILE = "rows.npz"
MEMBER_SUFFIX = "_pos"  # rows.npz's {modality}_pos: the rows that have that modality, in vector order
MAP_FILE = "map.npy"  # (N, 2) UMAP coordinates of the image embeddings, for the search page's map
FILES = frozenset({SIDECAR, ROWS_FILE, MAP_FILE, *(f"{m}.{ext}" for m in MODALITIES for ext in ("faiss", "npy"))})
REPAIR = "rebuild the index with 'galclip index'"


def sidecar_sha256(sidecar: dict) -> str:
    """SHA-256 of the sidecar's canonical JSON without its own ``sidecar_sha256``."""
    return canonical_sha256({k: v for k, v in sidecar.items() if k != "sidecar_sha256"})


def file_manifest(folder: Path) -> dict[str, dict]:
    """{file name: {"bytes", "sha256"}} of every file in ``folder`` (the sidecar's ``files``)."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(folder.iterdir())}


def write_sidecar(folder: Path, sidecar: dict) -> dict:
    """Seal ``sidecar`` with its own SHA-256 and write it as ``folder/index.json``; returns it."""
    sidecar["sidecar_sha256"] = sidecar_sha256(sidecar)
    write_json(sidecar, folder / SIDECAR)
    return sidecar


def verify_files(path: Path, sidecar: dict, hashes: bool) -> list[str]:
    """What differs from the files the index recorded (format 3): sizes always, SHA-256s when ``hashes``; empty
    when intact. Format 2 folders record neither and give no problems."""
    problems = []
    for name, rec in (sidecar.get("files") or {}).items():
        file = path / name
        if not file.exists():
            problems.append(f"{file}: missing")
        elif file.stat().st_size != rec["bytes"]:
            problems.append(f"{file}: {file.stat().st_size} bytes, index.json records {rec['bytes']}")
        elif hashes and sha256_file(file) != rec["sha256"]:
            problems.append(f"{file}: its SHA-256 differs from the one index.json records (damaged)")
    return problems


def read_sidecar(path: Path) -> dict:
    """The index folder's ``index.json``, checked against its own SHA-256 (format 3)."""
    if not (path / SIDECAR).exists():
        raise GalclipError(f"{path}: no {SIDECAR}; build an index with 'galclip index STORE HEADS {path}'")
    try:
        sidecar = json.loads((path / SIDECAR).read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedDataError(f"{path / SIDECAR}: not readable JSON ({err}): the index is damaged; {REPAIR}") from err
    if not isinstance(sidecar, dict) or sidecar.get("format") not in READABLE_FORMATS:
        fmt = sidecar.get("format") if isinstance(sidecar, dict) else None
        raise GalclipError(f"{path}: index format {fmt!r}, this galclip reads {FORMAT!r}; {REPAIR}")
    if sidecar["format"] == FORMAT and sidecar.get("sidecar_sha256") != sidecar_sha256(sidecar):
        raise DamagedDataError(f"{path / SIDECAR}: does not match its own SHA-256 (damaged); {REPAIR}")
    return sidecar


def verify(path: str | Path) -> list[str]:
    """Every problem of the index folder at ``path`` (its sidecar, then every file's size and SHA-256); empty when
    intact. Never raises on damage."""
    path = Path(path)
    try:
        sidecar = read_sidecar(path)
    except GalclipError as err:
        return [str(err)]
    return verify_files(path, sidecar, hashes=True)
