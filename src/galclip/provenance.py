"""Provenance helpers: file hashes, code version, device choice."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from galclip.version import __version__


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def canonical_sha256(value: object) -> str:
    """Hex SHA-256 of a JSON value written canonically (sorted keys, no spaces), as it reads back from a JSON file."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def code_version() -> str:
    """Package version plus the git commit of the source tree when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def resolve_device(name: str = "auto"):
    """'auto' -> CUDA when available, else CPU; otherwise ``torch.device(name)`` for "cpu", "cuda" or "cuda:N",
    refused with the fix (a :class:`~galclip.errors.GalclipError`) when it is unknown or not on this machine."""
    import re

    import torch

    from galclip.errors import GalclipError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", str(name))
    if match is None:
        raise GalclipError(f"--device {name}: not a device galclip runs on; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise GalclipError(
            f"--device {name}: this machine has no CUDA GPU that torch can use; use --device cpu "
            "(or auto, which picks a GPU when there is one)"
        )
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise GalclipError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return torch.device(name)
