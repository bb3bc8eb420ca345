"""The zero-shot catalogue's columns and its two formats, FITS and CSV, written as a stream.

One row per input galaxy, in input order::

    TARGETID       int64
    Z_PRED         float64   distance-weighted k-NN mean of the neighbours' redshifts
    Z_LO, Z_HI     float64   the neighbours' weighted 16th and 84th percentiles
    LOGMSTAR_PRED  float64   dex(solMass), likewise
    LOGMSTAR_LO, LOGMSTAR_HI
    SIM_TOP1       float32   cosine similarity of the nearest reference galaxy
    N_NEIGHBOURS   int16     neighbours used (0 for a quarantined input row: its predictions are NaN)
    OOD            bool      SIM_TOP1 below the reference set's own 1st percentile

The FITS file is a primary HDU and one BINTABLE whose header records the provenance (keyword
``GALCLIP = 'catalogue'`` marks the file as galclip's); rows are streamed to disk in blocks, so
memory does not grow with the catalogue. The CSV starts with ``# galclip catalogue`` and the
same provenance as ``# KEY = value`` lines.

Integrity: the FITS primary header's ``GCSHA256`` is the SHA-256 of the whole file with that
value read as 64 zeros; the CSV ends with ``# SHA256 = ...`` over every byte before that line.
Both are computed while streaming and checked by ``read_catalogue`` and ``galclip check``.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from galclip.errors import InputError

FORMAT = "galclip-catalogue/1"
FORMATS = ("fits", "csv")
COLUMNS: tuple[tuple[str, str, str, str], ...] = (  # name, numpy dtype, FITS TFORM, unit
    ("TARGETID", "i8", "K", ""),
    ("Z_PRED", "f8", "D", ""),
    ("Z_LO", "f8", "D", ""),
    ("Z_HI", "f8", "D", ""),
    ("LOGMSTAR_PRED", "f8", "D", "dex(solMass)"),
    ("LOGMSTAR_LO", "f8", "D", "dex(solMass)"),
    ("LOGMSTAR_HI", "f8", "D", "dex(solMass)"),
    ("SIM_TOP1", "f4", "E", ""),
    ("N_NEIGHBOURS", "i2", "I", ""),
    ("OOD", "?", "L", ""),
)
ROW_DTYPE = np.dtype([(name, dtype) for name, dtype, _, _ in COLUMNS])
# FITS binary tables are big-endian; a logical is one byte, 'T' or 'F'
FITS_DTYPE = np.dtype([(name, "S1" if dtype == "?" else ">" + dtype) for name, dtype, _, _ in COLUMNS])
_FITS_BLOCK = 2880
_CSV_MARK = "# galclip catalogue"
_SHA_KEY = "GCSHA256"
_ZEROS = "0" * 64
_CSV_SHA = "# SHA256 = "


def format_for(path: Path, requested: str | None) -> str:
    """The catalogue format: ``requested``, else from the suffix (.csv -> csv, anything else -> fits)."""
    if requested is not None:
        if requested not in FORMATS:
            raise InputError(f"--format must be one of {list(FORMATS)}, got {requested!r}")
        return requested
    return "csv" if path.suffix.lower() == ".csv" else "fits"


def is_galclip_catalogue(path: Path) -> bool:
    """Whether ``path`` is a catalogue galclip wrote (FITS keyword GALCLIP, or the CSV's first line)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_FITS_BLOCK)
    except OSError:
        return False
    if head.startswith(_CSV_MARK.encode()):
        return True
    if head.startswith(b"SIMPLE  ="):
        cards = [head[i:i + 80].decode("ascii", "replace") for i in range(0, len(head), 80)]
        return any(c.startswith("GALCLIP =") and "'catalogue'" in c for c in cards)
    return False


def check_output(path: Path, overwrite: bool = False) -> None:
    """Refuse an output path that exists and is not a galclip catalogue (it would be replaced), unless
    ``overwrite``."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder; OUT is the catalogue file to write, e.g. {path / 'catalogue.fits'}")
    if path.exists() and not overwrite and not is_galclip_catalogue(path):
        raise InputError(f"{path}: exists and is not a galclip catalogue; it would be replaced. Choose a new "
                         "output path, or pass --overwrite to replace it")


def empty_rows(n: int) -> np.ndarray:
    """(n,) catalogue rows for galaxies without a prediction: NaN estimates, 0 neighbours, not OOD."""
    rows = np.zeros(n, ROW_DTYPE)
    for name, dtype, _, _ in COLUMNS:
        if dtype.startswith("f"):
            rows[name] = np.nan
    return rows


class CatalogueWriter:
    """Write ``n_rows`` catalogue rows to ``path`` block by block; ``close`` checks the count and finishes the file.

    header: keyword -> value (str, int or float), recorded in the FITS header or the CSV preamble."""

    def __init__(self, path: Path, fmt: str, n_rows: int, header: dict[str, object]):
        self.path, self.fmt, self.n_rows, self.header = Path(path), fmt, int(n_rows), header
        self.written = 0
        self._sha = hashlib.sha256()
        self._file: BinaryIO = open(self.path, "wb")
        if fmt == "fits":
            self._emit(self._fits_headers())
        else:
            lines = [f"{_CSV_MARK} {FORMAT}"] + [f"# {k} = {v}" for k, v in header.items()]
            lines += [f"# {name} [{unit}]" for name, _, _, unit in COLUMNS if unit]
            lines.append(",".join(ROW_DTYPE.names))
            self._emit(("\n".join(lines) + "\n").encode())

    def _emit(self, data: bytes) -> None:
        self._sha.update(data)
        self._file.write(data)

    def _fits_headers(self) -> bytes:
        from astropy.io import fits

        primary = fits.PrimaryHDU()
        cols = [fits.Column(name=name, format=tform, unit=unit or None) for name, _, tform, unit in COLUMNS]
        table = fits.BinTableHDU.from_columns(cols, nrows=0, name="CATALOGUE")
        table.header["NAXIS2"] = self.n_rows
        primary.header[_SHA_KEY] = _ZEROS  # the SHA-256 of this file with this value as zeros, filled in at close
        for hdr in (primary.header, table.header):
            hdr["GALCLIP"] = ("catalogue", FORMAT)
            for key, value in self.header.items():
                if isinstance(value, float) and not math.isfinite(value):
                    value = str(value)
                hdr[key] = value
        return primary.header.tostring().encode() + table.header.tostring().encode()

    def write(self, rows: np.ndarray) -> None:
        """Append (m,) rows of ``ROW_DTYPE``."""
        rows = np.asarray(rows, ROW_DTYPE)
        if self.written + len(rows) > self.n_rows:
            raise ValueError(f"catalogue {self.path}: more than the {self.n_rows} rows announced")
        if self.fmt == "fits":
            out = np.empty(len(rows), FITS_DTYPE)
            for name, dtype, _, _ in COLUMNS:
                out[name] = np.where(rows[name], b"T", b"F") if dtype == "?" else rows[name]
            self._emit(out.tobytes())
        else:
            lines = [",".join([str(int(r["TARGETID"]))]
                              + [_csv_number(r[name]) for name in ROW_DTYPE.names[1:-2]]
                              + [str(int(r["N_NEIGHBOURS"])), "1" if r["OOD"] else "0"]) for r in rows]
            if lines:
                self._emit(("\n".join(lines) + "\n").encode())
        self.written += len(rows)

    def close(self) -> None:
        """Finish the file (FITS: pad the data to a whole 2880-byte block); refuses a short catalogue."""
        if self.written != self.n_rows:
            self._file.close()
            raise ValueError(f"catalogue {self.path}: {self.written} rows written, {self.n_rows} announced")
        if self.fmt == "fits":
            size = self.written * FITS_DTYPE.itemsize
            self._emit(b"\0" * (-size % _FITS_BLOCK))
            self._file.seek(_sha_offset(self.path))
            self._file.write(self._sha.hexdigest().encode())
        else:
            self._file.write(f"{_CSV_SHA}{self._sha.hexdigest()}\n".encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def _csv_number(value: float) -> str:
    value = float(value)
    return "nan" if not math.isfinite(value) else f"{value:.9g}"


def _sha_offset(path: Path) -> int:
    """Byte offset of the GCSHA256 value (64 hex digits) in a FITS catalogue's primary header."""
    with open(path, "rb") as f:
        head = f.read(_FITS_BLOCK)
    for i in range(0, len(head), 80):
        if head[i:i + 8].decode("ascii", "replace").rstrip() == _SHA_KEY:
            at = head.find(b"'", i, i + 80)
            if at >= 0:
                return at + 1
    raise ValueError(f"{path}: no {_SHA_KEY} card")


def catalogue_problems(path: Path) -> list[str]:
    """What is wrong with a galclip catalogue's bytes: its recorded SHA-256 against the file's (empty when intact).
    Streams the file."""
    path = Path(path)
    if not is_galclip_catalogue(path):
        return [f"{path}: not a galclip catalogue (no GALCLIP mark: damaged, or another file)"]
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        if f.read(len(_CSV_MARK)).decode(errors="replace") == _CSV_MARK:
            f.seek(0)
            recorded, last = None, b""
            for line in f:
                if line.startswith(_CSV_SHA.encode()):
                    recorded = line[len(_CSV_SHA):].strip().decode(errors="replace")
                    last = line
                    break
                sha.update(line)
            if recorded is None or f.read(1) or not last.endswith(b"\n"):
                return [f"{path}: its closing '# SHA256 = ...' line is missing or damaged (or the file was cut)"]
        else:
            try:
                at = _sha_offset(path)
            except ValueError:
                return [f"{path}: its {_SHA_KEY} card is missing or damaged"]
            f.seek(0)
            head = bytearray(f.read(_FITS_BLOCK))
            recorded = head[at:at + 64].decode("ascii", "replace")
            head[at:at + 64] = _ZEROS.encode()
            sha.update(bytes(head))
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
    if sha.hexdigest() != recorded:
        return [f"{path}: its bytes do not match the SHA-256 it records (damaged)"]
    return []


def read_catalogue(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """A galclip catalogue back in memory, verified: ((n,) rows of ``ROW_DTYPE``, header keyword -> value)."""
    from galclip.errors import DamagedDataError

    path = Path(path)
    problems = catalogue_problems(path)
    if problems:
        raise DamagedDataError(f"{problems[0]}; write it again with 'galclip predict'")
    with open(path, "rb") as f:
        first = f.read(len(_CSV_MARK))
    if first.decode(errors="replace") == _CSV_MARK:
        header, names, body = {}, None, []
        for line in path.read_text().splitlines():
            if line.startswith(_CSV_SHA):
                continue
            if line.startswith("# ") and " = " in line:
                key, value = line[2:].split(" = ", 1)
                header[key] = value
            elif not line.startswith("#") and names is None:
                names = line.split(",")
            elif not line.startswith("#"):
                body.append(line.split(","))
        rows = np.zeros(len(body), ROW_DTYPE)
        for j, name in enumerate(names or []):
            col = [b[j] for b in body]
            rows[name] = [c == "1" for c in col] if name == "OOD" else np.asarray(col, dtype=ROW_DTYPE[name])
        return rows, header
    from astropy.io import fits

    with fits.open(path) as hdul:
        data, hdr = hdul[1].data, hdul[1].header
        rows = np.zeros(len(data), ROW_DTYPE)
        for name in ROW_DTYPE.names:
            rows[name] = data[name]
        header = {k: str(v) for k, v in hdr.items() if not k.startswith(("TTYPE", "TFORM", "TUNIT", "NAXIS", "PCOUNT",
                                                                            "GCOUNT", "TFIELDS", "XTENSION", "BITPIX"))}
    return rows, header
