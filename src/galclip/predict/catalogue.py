"""The zero-shot catalogue's columns and its four formats, FITS, CSV, ECSV and Parquet, written as a stream.

One row per input galaxy, in input order::

    TARGETID       int64
    Z_PRED         float64   distance-weighted k-NN mean of the neighbours' redshifts
    Z_LO, Z_HI     float64   the neighbours' weighted 16th and 84th percentiles
    LOGMSTAR_PRED  float64   log10(M*/solMass), likewise (astropy unit dex(solMass))
    LOGMSTAR_LO, LOGMSTAR_HI
    SIM_TOP1       float32   cosine similarity of the nearest reference galaxy
    N_NEIGHBOURS   int16     neighbours used (0 for a quarantined input row: its predictions are NaN)
    OOD            bool      SIM_TOP1 below the reference set's own 1st percentile

The format follows OUT's suffix (``.csv``, ``.ecsv``, ``.parquet``; anything else is FITS) unless asked for.
Rows are streamed to disk in blocks, so memory does not grow with the catalogue.

- FITS: a primary HDU and one BINTABLE whose header records the provenance (keyword ``GALCLIP = 'catalogue'``
  marks the file as galclip's). The LOGMSTAR columns carry no TUNIT: the FITS standard's ``log(solMass)`` is a
  function unit astropy cannot read, and astropy's ``dex(solMass)`` is no FITS unit (astropy warns on both);
  their descriptions (TCOMMn, as TOPCAT shows them) say ``log10(M*/solMass)``.
- CSV: one header row of column names, then one line per galaxy; nothing else, so every CSV reader opens it with
  its defaults. A missing value is ``NaN``, OOD is ``1``/``0``. The provenance, the columns' units and the file's
  size and SHA-256 are in the sidecar ``<name>.csv.json`` beside it, which also marks it as galclip's.
- ECSV: astropy's ECSV 1.0 (YAML header: units and descriptions per column, the provenance in ``meta``), NaN as
  ``nan``, OOD as ``True``/``False``.
- Parquet: one row group per 131072 rows (pyarrow), the provenance as JSON under the schema metadata key
  ``galclip`` (and astropy's ``table_meta_yaml``, so astropy reads the units), units per field; the file's size
  and SHA-256 are in the sidecar ``<name>.parquet.json``.

Integrity: FITS and ECSV carry their own SHA-256 (``GCSHA256``, in the FITS primary header or the ECSV meta),
of the whole file with that value read as 64 zeros; CSV and Parquet have their sidecar's. The sidecar is written
at ``close`` beside the catalogue's final path (``final``) before predict renames the finished file into place,
so a crash leaves the old pair, or a new sidecar beside the old file (galclip's, so predict may replace it, and
reported damaged by ``galclip check``), never a catalogue without a sidecar. Format ``galclip-catalogue/1`` CSVs
(provenance in ``#`` lines, ``# SHA256 = ...`` last) still read and verify.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from galclip.errors import InputError

logger = logging.getLogger(__name__)

FORMAT = "galclip-catalogue/2"  # 2: plain CSV with a sidecar; ECSV and Parquet
FORMAT_1 = "galclip-catalogue/1"
READABLE_FORMATS = (FORMAT_1, FORMAT)
FORMATS = ("fits", "csv", "ecsv", "parquet")
SUFFIXES = {".fits": "fits", ".fit": "fits", ".csv": "csv", ".ecsv": "ecsv", ".parquet": "parquet"}
SIDECAR_FORMATS = ("csv", "parquet")  # the formats whose SHA-256 is in a sidecar <name>.json
LOG_MASS_UNIT = "dex(solMass)"  # astropy's unit for log10(M/solMass); not a FITS unit
COLUMNS: tuple[tuple[str, str, str, str, str], ...] = (  # name, numpy dtype, FITS TFORM, unit, description
    ("TARGETID", "i8", "K", "", "target ID of the input galaxy"),
    ("Z_PRED", "f8", "D", "", "redshift: weighted k-NN mean"),
    ("Z_LO", "f8", "D", "", "redshift: weighted 16th percentile"),
    ("Z_HI", "f8", "D", "", "redshift: weighted 84th percentile"),
    ("LOGMSTAR_PRED", "f8", "D", LOG_MASS_UNIT, "log10(M*/solMass): weighted k-NN mean"),
    ("LOGMSTAR_LO", "f8", "D", LOG_MASS_UNIT, "log10(M*/solMass): weighted 16th percentile"),
    ("LOGMSTAR_HI", "f8", "D", LOG_MASS_UNIT, "log10(M*/solMass): weighted 84th percentile"),
    ("SIM_TOP1", "f4", "E", "", "cosine similarity of the nearest reference"),
    ("N_NEIGHBOURS", "i2", "I", "", "neighbours used; 0: no prediction (NaN)"),
    ("OOD", "?", "L", "", "SIM_TOP1 below the reference 1st percentile"),
)
ROW_DTYPE = np.dtype([(c[0], c[1]) for c in COLUMNS])
# FITS binary tables are big-endian; a logical is one byte, 'T' or 'F'
FITS_DTYPE = np.dtype([(c[0], "S1" if c[1] == "?" else ">" + c[1]) for c in COLUMNS])
ROW_GROUP = 1 << 17  # Parquet rows per row group (about 7 MB in memory)
CSV_MISSING, CSV_TRUE, CSV_FALSE = "NaN", "1", "0"
_FITS_BLOCK = 2880
_HEAD = 1 << 16  # the bytes read to recognise a catalogue (an ECSV header is about 2 KB)
_CSV_MARK = "# galclip catalogue"  # format 1's first line
_SHA_KEY = "GCSHA256"
_ZEROS = "0" * 64
_CSV_SHA = "# SHA256 = "
_ECSV_MARK = b"\n# - {GALCLIP: catalogue}\n"
_ECSV_SHA = f"# - {{{_SHA_KEY}: '".encode()
_PARQUET_KEY = b"galclip"


def format_for(path: Path, requested: str | None) -> str:
    """The catalogue format: ``requested``, else from the suffix (.csv, .ecsv, .parquet; anything else -> fits)."""
    if requested is not None:
        if requested not in FORMATS:
            raise InputError(f"--format must be one of {list(FORMATS)}, got {requested!r}")
        return requested
    return SUFFIXES.get(Path(path).suffix.lower(), "fits")


def sidecar_path(path: Path) -> Path:
    """The sidecar of a CSV or Parquet catalogue: ``<name>.json`` beside the file (a symlink's target)."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".json")


def _read_head(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(_HEAD)
    except OSError:
        return None


def _sidecar_marked(path: Path) -> bool:
    """Whether ``path`` (a sidecar) carries the catalogue mark; a damaged one still does, so it is reported."""
    head = _read_head(path)
    return head is not None and b'"galclip-catalogue/' in head[:4096]


def _parquet_marked(path: Path) -> bool:
    """Whether a Parquet file's footer holds the ``galclip`` metadata key (read from the file's end, no pyarrow)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < 12:
                return False
            f.seek(size - 8)
            tail = f.read(8)
            length = int.from_bytes(tail[:4], "little")
            if tail[4:] != b"PAR1" or not 0 < length <= min(size - 12, 1 << 26):
                return False
            f.seek(size - 8 - length)
            footer = f.read(length)
    except OSError:
        return False
    return _PARQUET_KEY in footer and b"galclip-catalogue/" in footer


def _layout(path: Path) -> str | None:
    """Which galclip catalogue ``path`` is, from its marks: fits, ecsv, parquet, csv (a sidecar), csv1 (format 1),
    or None (not galclip's)."""
    head = _read_head(path)
    if head is None:
        return None
    if head.startswith(b"SIMPLE  ="):
        cards = [head[i : i + 80].decode("ascii", "replace") for i in range(0, min(len(head), _FITS_BLOCK), 80)]
        return "fits" if any(c.startswith("GALCLIP =") and "'catalogue'" in c for c in cards) else None
    if head.startswith(b"# %ECSV"):
        return "ecsv" if _ECSV_MARK in head else None
    if head.startswith(_CSV_MARK.encode()):
        return "csv1"
    if head.startswith(b"PAR1"):
        return "parquet" if _parquet_marked(path) or _sidecar_marked(sidecar_path(path)) else None
    return "csv" if _sidecar_marked(sidecar_path(path)) else None


def is_galclip_catalogue(path: Path) -> bool:
    """Whether ``path`` is a catalogue galclip wrote: the FITS keyword GALCLIP, the ECSV meta's GALCLIP, the Parquet
    metadata key ``galclip``, or (CSV) a galclip sidecar ``<name>.json`` beside it."""
    return _layout(Path(path)) is not None


def check_output(path: Path, overwrite: bool = False, fmt: str | None = None) -> None:
    """Refuse an output path that exists and is not a galclip catalogue (it would be replaced), or whose sidecar
    path holds a file that is not a galclip sidecar, unless ``overwrite``. fmt: the format to be written
    (default: from the suffix)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; OUT is the catalogue file to write, e.g. {path / 'catalogue.fits'}")
    if overwrite:
        return
    if path.exists() and not is_galclip_catalogue(path):
        raise InputError(
            f"{path}: exists and is not a galclip catalogue; it would be replaced. Choose a new "
            "output path, or pass --overwrite to replace it"
        )
    side = sidecar_path(path)
    if format_for(path, fmt) in SIDECAR_FORMATS and side.exists() and not _sidecar_marked(side):
        raise InputError(
            f"{side}: exists and is not a galclip catalogue sidecar; writing {path} would replace it. "
            "Choose a new output path, or pass --overwrite to replace it"
        )


def empty_rows(n: int) -> np.ndarray:
    """(n,) catalogue rows for galaxies without a prediction: NaN estimates, 0 neighbours, not OOD."""
    rows = np.zeros(n, ROW_DTYPE)
    for name, dtype, *_ in COLUMNS:
        if dtype.startswith("f"):
            rows[name] = np.nan
    return rows


def _plain_header(header: dict[str, object]) -> dict[str, object]:
    """The provenance as JSON/YAML scalars: numpy scalars to Python, a non-finite float to its text (as in FITS)."""
    out = {}
    for key, value in header.items():
        value = value.item() if isinstance(value, np.generic) else value
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[str(key)] = value
    return out


def _columns_record() -> list[dict[str, object]]:
    return [
        {"name": name, "dtype": np.dtype(dtype).name, "unit": unit or None, "description": text}
        for name, dtype, _, unit, text in COLUMNS
    ]


def _astropy_table(meta: dict[str, object]):
    """An empty astropy Table of the catalogue's columns, units, descriptions and ``meta``."""
    import astropy.units as u
    from astropy.table import Column, Table

    cols = [
        Column(np.zeros(0, dtype), name=name, unit=u.Unit(unit) if unit else None, description=text)
        for name, dtype, _, unit, text in COLUMNS
    ]
    return Table(cols, meta=meta)


def _text_lines(rows: np.ndarray, sep: str, missing: str, true: str, false: str) -> bytes:
    """(m,) rows as m text lines: shortest round-trip numbers, ``missing`` for NaN, ``true``/``false`` for OOD."""
    cols = []
    for name, dtype, *_ in COLUMNS:
        values = rows[name]
        if dtype == "?":
            cols.append([true if v else false for v in values.tolist()])
        elif dtype == "f8":
            cols.append([missing if math.isnan(v) else repr(v) for v in values.tolist()])
        elif dtype.startswith("f"):
            cols.append([missing if math.isnan(v) else str(v) for v in values])  # float32's own shortest digits
        else:
            cols.append([str(v) for v in values.tolist()])
    if not len(rows):
        return b""
    return ("\n".join(map(sep.join, zip(*cols))) + "\n").encode("ascii")


class CatalogueWriter:
    """Write ``n_rows`` catalogue rows to ``path`` block by block; ``close`` checks the count and finishes the file.

    header: keyword -> value (str, int or float), recorded in the FITS header, the ECSV meta, the Parquet metadata
    or the CSV's sidecar. final: the path ``path`` will be renamed to (predict writes to a temporary name), beside
    which a CSV's or Parquet's sidecar is written at ``close``; default ``path``. row_group: Parquet rows per row
    group."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        n_rows: int,
        header: dict[str, object],
        final: Path | None = None,
        row_group: int = ROW_GROUP,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"catalogue format {fmt!r}: not one of {FORMATS}")
        self.path, self.fmt, self.n_rows, self.header = Path(path), fmt, int(n_rows), header
        self.final = Path(final) if final is not None else self.path
        self.row_group = int(row_group)
        self.written = 0
        self._sha = hashlib.sha256()
        self._sha_at: int | None = None  # where the in-file SHA-256 goes (FITS, ECSV)
        self._file: BinaryIO | None = None
        self._parquet = None
        self._pending: list[np.ndarray] = []
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._schema = _parquet_schema(header)
            self._parquet = pq.ParquetWriter(str(self.path), self._schema)
            return
        self._file = open(self.path, "wb")  # open until close or abort
        if fmt == "fits":
            head = self._fits_headers()
            self._sha_at = _sha_offset(head)
            self._emit(head)
        elif fmt == "ecsv":
            head = _ecsv_header(header)
            self._sha_at = head.index(_ECSV_SHA + _ZEROS.encode()) + len(_ECSV_SHA)
            self._emit(head)
        else:
            self._emit((",".join(ROW_DTYPE.names) + "\n").encode("ascii"))

    def _emit(self, data: bytes) -> None:
        self._sha.update(data)
        self._file.write(data)

    def _fits_headers(self) -> bytes:
        from astropy.io import fits

        primary = fits.PrimaryHDU()
        # TUNIT only for units FITS defines and astropy reads: none of LOG_MASS_UNIT's (see the module's docstring)
        cols = [
            fits.Column(name=name, format=tform, unit=None if unit in ("", LOG_MASS_UNIT) else unit)
            for name, _, tform, unit, _ in COLUMNS
        ]
        table = fits.BinTableHDU.from_columns(cols, nrows=0, name="CATALOGUE")
        table.header["NAXIS2"] = self.n_rows
        for i, (*_, text) in enumerate(COLUMNS, 1):  # the column descriptions TOPCAT/STILTS show
            table.header.insert(f"TFORM{i}", (f"TCOMM{i}", text), after=True)
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
            for name, dtype, *_ in COLUMNS:
                out[name] = np.where(rows[name], b"T", b"F") if dtype == "?" else rows[name]
            self._emit(out.tobytes())
        elif self.fmt == "csv":
            self._emit(_text_lines(rows, ",", CSV_MISSING, CSV_TRUE, CSV_FALSE))
        elif self.fmt == "ecsv":
            self._emit(_text_lines(rows, " ", "nan", "True", "False"))
        else:
            self._pending.append(rows.copy())
            if sum(len(r) for r in self._pending) >= self.row_group:
                self._flush_parquet(final=False)
        self.written += len(rows)

    def _flush_parquet(self, final: bool) -> None:
        """Write the pending rows as whole row groups (all of them when ``final``)."""
        import pyarrow as pa

        rows = np.concatenate(self._pending) if self._pending else np.zeros(0, ROW_DTYPE)
        cut = len(rows) if final else len(rows) - len(rows) % self.row_group
        for lo in range(0, cut, self.row_group):
            part = rows[lo : min(lo + self.row_group, cut)]
            arrays = [pa.array(np.ascontiguousarray(part[name])) for name in ROW_DTYPE.names]
            self._parquet.write_table(pa.Table.from_arrays(arrays, schema=self._schema), row_group_size=len(part))
        self._pending = [rows[cut:]] if cut < len(rows) else []

    def close(self) -> None:
        """Finish the file (FITS: pad the data to a whole 2880-byte block; its SHA-256 in place; CSV, Parquet: the
        sidecar beside ``final``); refuses a short catalogue."""
        if self.written != self.n_rows:
            self.abort()
            raise ValueError(f"catalogue {self.path}: {self.written} rows written, {self.n_rows} announced")
        if self.fmt == "parquet":
            self._flush_parquet(final=True)
            self._parquet.close()
            self._parquet = None
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())
            from galclip.provenance import sha256_file

            self._write_sidecar(sha256_file(self.path))
            return
        if self.fmt == "fits":
            size = self.written * FITS_DTYPE.itemsize
            self._emit(b"\0" * (-size % _FITS_BLOCK))
        if self._sha_at is not None:
            self._file.flush()
            self._file.seek(self._sha_at)
            self._file.write(self._sha.hexdigest().encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.fmt == "csv":
            self._write_sidecar(self._sha.hexdigest())

    def _write_sidecar(self, sha256: str) -> None:
        """``<final name>.json``: the format, columns, provenance, row count and the file's size and SHA-256, sealed
        with its own SHA-256."""
        from galclip.atomic import atomic_write_text
        from galclip.provenance import canonical_sha256

        record: dict[str, object] = {
            "format": FORMAT,
            "file": self.final.name,
            "file_format": self.fmt,
            "rows": self.written,
            "bytes": self.path.stat().st_size,
            "sha256": sha256,
            "columns": _columns_record(),
            "header": _plain_header(self.header),
        }
        if self.fmt == "csv":
            record["csv"] = {
                "delimiter": ",",
                "header_rows": 1,
                "missing": CSV_MISSING,
                "true": CSV_TRUE,
                "false": CSV_FALSE,
            }
        record["sidecar_sha256"] = canonical_sha256(record)
        side = sidecar_path(self.final)
        atomic_write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", side)
        logger.debug("catalogue sidecar %s", side)

    def abort(self) -> None:
        """Close the file unfinished (the caller removes it)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None


def _ecsv_header(header: dict[str, object]) -> bytes:
    """The ECSV 1.0 header and column-name line, written by astropy from an empty table; ``GCSHA256`` as zeros."""
    meta = {"GALCLIP": "catalogue", "FORMAT": FORMAT, **_plain_header(header), _SHA_KEY: _ZEROS}
    buf = io.StringIO()
    _astropy_table(meta).write(buf, format="ascii.ecsv")
    text = buf.getvalue().replace("\r\n", "\n").encode("ascii")
    if _ECSV_MARK not in text or text.count(_ECSV_SHA + _ZEROS.encode()) != 1 or len(text) > _HEAD // 2:
        raise ValueError("catalogue header: astropy's ECSV header lacks the GALCLIP or GCSHA256 line, or is too long")
    return text


def _parquet_schema(header: dict[str, object]):
    """The Parquet schema: per field its unit and description; the provenance as JSON under ``galclip`` and as
    astropy's ``table_meta_yaml``."""
    import pyarrow as pa
    from astropy.table import meta as table_meta

    plain = _plain_header(header)
    fields = [
        pa.field(
            name,
            pa.from_numpy_dtype(np.dtype(dtype)),
            nullable=False,
            metadata={b"unit": unit.encode(), b"description": text.encode()}
            if unit
            else {b"description": text.encode()},
        )
        for name, dtype, _, unit, text in COLUMNS
    ]
    record = {"format": FORMAT, "columns": _columns_record(), "header": plain}
    yaml = "\n".join(
        table_meta.get_yaml_from_table(_astropy_table({"GALCLIP": "catalogue", "FORMAT": FORMAT, **plain}))
    )
    return pa.schema(fields, metadata={_PARQUET_KEY: json.dumps(record).encode(), b"table_meta_yaml": yaml.encode()})


def _sha_offset(head: bytes) -> int:
    """Byte offset of the GCSHA256 value (64 hex digits) in a FITS catalogue's first bytes (its primary header)."""
    head = head[:_FITS_BLOCK]
    for i in range(0, len(head), 80):
        if head[i : i + 8].decode("ascii", "replace").rstrip() == _SHA_KEY:
            at = head.find(b"'", i, i + 80)
            if at >= 0:
                return at + 1
    raise ValueError(f"no {_SHA_KEY} card")


def _read_sidecar(path: Path) -> tuple[dict | None, list[str]]:
    """A CSV's or Parquet's sidecar, checked against its own SHA-256: (record, []) or (None, [problem])."""
    from galclip.provenance import canonical_sha256

    side = sidecar_path(path)
    if not side.exists():
        return None, [f"{path}: its sidecar {side.name} is missing (moved, deleted, or never written)"]
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return None, [f"{side}: the sidecar of {path.name} is not readable JSON ({err}) (damaged)"]
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        fmt = record.get("format") if isinstance(record, dict) else None
        return None, [f"{side}: sidecar format {fmt!r}, this galclip reads {FORMAT!r}"]
    if record.get("sidecar_sha256") != canonical_sha256({k: v for k, v in record.items() if k != "sidecar_sha256"}):
        return None, [f"{side}: the sidecar of {path.name} does not match its own SHA-256 (damaged)"]
    return record, []


def _sidecar_problems(path: Path, layout: str) -> list[str]:
    record, problems = _read_sidecar(path)
    if record is None:
        return problems
    if record.get("file_format") != layout:
        return [
            (
                f"{path}: its sidecar describes a {record.get('file_format')} file, this is {layout} (damaged, "
                "or the sidecar is another catalogue's)"
            )
        ]
    size = path.stat().st_size
    if size != record.get("bytes"):
        return [
            (
                f"{path}: {size} bytes, its sidecar records {record.get('bytes')} (damaged or cut, or the "
                "sidecar is another catalogue's)"
            )
        ]
    from galclip.provenance import sha256_file

    if sha256_file(path) != record.get("sha256"):
        return [f"{path}: its bytes do not match the SHA-256 its sidecar records (damaged)"]
    return []


def catalogue_problems(path: Path) -> list[str]:
    """What is wrong with a galclip catalogue's bytes: its recorded SHA-256 (in the file, or its sidecar's) against
    the file's; empty when intact. Streams the file."""
    path = Path(path)
    layout = _layout(path)
    if layout is None:
        side = sidecar_path(path)
        return [
            (
                f"{path}: not a galclip catalogue (no GALCLIP mark, and no galclip sidecar {side.name} beside "
                "it: damaged, its sidecar lost, or another file)"
            )
        ]
    if layout in SIDECAR_FORMATS:
        return _sidecar_problems(path, layout)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        if layout == "csv1":
            recorded, last = None, b""
            for line in f:
                if line.startswith(_CSV_SHA.encode()):
                    recorded = line[len(_CSV_SHA) :].strip().decode(errors="replace")
                    last = line
                    break
                sha.update(line)
            if recorded is None or f.read(1) or not last.endswith(b"\n"):
                return [f"{path}: its closing '# SHA256 = ...' line is missing or damaged (or the file was cut)"]
        else:
            head = bytearray(f.read(_HEAD))
            if layout == "fits":
                try:
                    at = _sha_offset(bytes(head))
                except ValueError:
                    return [f"{path}: its {_SHA_KEY} card is missing or damaged"]
            else:
                at = head.find(_ECSV_SHA)
                if at < 0 or head[at + len(_ECSV_SHA) + 64 : at + len(_ECSV_SHA) + 66] != b"'}":
                    return [f"{path}: its {_SHA_KEY} meta line is missing or damaged"]
                at += len(_ECSV_SHA)
            recorded = head[at : at + 64].decode("ascii", "replace")
            head[at : at + 64] = _ZEROS.encode()
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
    layout = _layout(path)
    if layout == "csv1":
        return _read_csv1(path)
    if layout == "csv":
        record, _ = _read_sidecar(path)
        with open(path, newline="", encoding="ascii") as f:
            reader = csv.reader(f)
            names = next(reader)
            body = list(reader)
        if tuple(names) != ROW_DTYPE.names:
            raise DamagedDataError(f"{path}: columns {names}, a catalogue has {list(ROW_DTYPE.names)}")
        rows = np.zeros(len(body), ROW_DTYPE)
        for name, values in zip(names, zip(*body)):
            text = np.asarray(values, dtype=str)
            rows[name] = text == CSV_TRUE if name == "OOD" else text.astype(ROW_DTYPE[name])
        return rows, {k: str(v) for k, v in record["header"].items()}
    if layout == "ecsv":
        from astropy.table import Table

        table = Table.read(path, format="ascii.ecsv")
        rows = np.zeros(len(table), ROW_DTYPE)
        for name in ROW_DTYPE.names:
            rows[name] = np.asarray(table[name])
        skip = ("GALCLIP", "FORMAT", _SHA_KEY)
        return rows, {k: str(v) for k, v in table.meta.items() if k not in skip}
    if layout == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        rows = np.zeros(table.num_rows, ROW_DTYPE)
        for name in ROW_DTYPE.names:
            rows[name] = table.column(name).to_numpy()
        record = json.loads(table.schema.metadata[_PARQUET_KEY])
        return rows, {k: str(v) for k, v in record["header"].items()}
    from astropy.io import fits

    with fits.open(path) as hdul:
        data, hdr = hdul[1].data, hdul[1].header
        rows = np.zeros(len(data), ROW_DTYPE)
        for name in ROW_DTYPE.names:
            rows[name] = data[name]
        columns = ("TTYPE", "TFORM", "TUNIT", "TCOMM", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "XTENSION", "BITPIX")
        header = {k: str(v) for k, v in hdr.items() if not k.startswith(columns)}
    return rows, header


def _read_csv1(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """A format-1 CSV (``#`` provenance lines, ``# SHA256 = ...`` last), already verified."""
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
