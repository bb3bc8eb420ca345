"""The zero-shot catalogue's columns and its four formats, FITS, CSV, ECSV and Parquet, written as a stream.

One row per input galaxy, in input order; the columns follow the labels the index predicts and whether the input
gives positions (:func:`catalogue_columns`)::

    TARGETID        int64
    RA, DEC         float64   ICRS right ascension and declination of the input galaxy, degrees (unit deg); only
                              when the input gives positions
    P_PRED          float64   per label, in the index's order: the distance-weighted k-NN mean of the neighbours'
                              values
    P_LO, P_HI      float64   the neighbours' weighted 16th and 84th percentiles, stretched about their centre by
                              the split-conformal factor fitted on the index's selection split (calibrated 68%)
    SIM_TOP1        float32   cosine similarity of the nearest reference galaxy
    N_NEIGHBOURS    int16     neighbours used (0 for a quarantined input row: its predictions are NaN)
    OOD             bool      SIM_TOP1 below the reference set's own 1st percentile

P is the label's prefix (``galclip.vocabulary.label_info``): Z (redshift), LOGMSTAR (log10(M*/solMass), astropy
unit ``dex(solMass)``), LOGZMW (log10 of the mass-weighted metallicity, ``dex``), TAGEMW (mass-weighted age,
``Gyr``), LOGSSFR (log10 of the 1-Gyr specific star-formation rate, ``dex(1/yr)``); another label NAME gives
NAME upper-cased, without a unit. The default, redshift and log_mstar without positions, is ``COLUMNS`` (rows of
``ROW_DTYPE``): TARGETID, Z_PRED/LO/HI, LOGMSTAR_PRED/LO/HI, SIM_TOP1, N_NEIGHBOURS, OOD.

The format follows OUT's suffix (``.csv``, ``.ecsv``, ``.parquet``; anything else is FITS) unless asked for.
Rows are streamed to disk in blocks, so memory does not grow with the catalogue.

- FITS: a primary HDU and one BINTABLE whose header records the provenance (keyword ``GALCLIP = 'catalogue'``,
  its comment the format version, marks the file as galclip's). The log columns (LOGMSTAR, LOGZMW, LOGSSFR) carry
  no TUNIT: the FITS standard's ``log(solMass)`` is a function unit astropy cannot read, and astropy's
  ``dex(solMass)``/``dex`` are no FITS units (astropy warns on both); their descriptions (TCOMMn, as TOPCAT shows
  them) say ``log10(M*/solMass)`` or ``dex``. RA, DEC (``deg``) and TAGEMW (``Gyr``) carry their TUNIT.
- CSV: one header row of column names, then one line per galaxy; nothing else, so every CSV reader opens it with
  its defaults. A missing value is ``NaN``, OOD is ``1``/``0``. The provenance, the columns' dtypes, units and
  descriptions and the file's size and SHA-256 are in the sidecar ``<name>.csv.json`` beside it, which also marks
  it as galclip's.
- ECSV: astropy's ECSV 1.0 (YAML header: units and descriptions per column, the provenance in ``meta``), NaN as
  ``nan``, OOD as ``True``/``False``.
- Parquet: one row group per 131072 rows (pyarrow), the provenance as JSON under the schema metadata key
  ``galclip`` (and astropy's ``table_meta_yaml``, so astropy reads the units), units per field; the file's size
  and SHA-256 are in the sidecar ``<name>.parquet.json``.

Integrity: FITS and ECSV carry their own SHA-256 (``GCSHA256``, in the FITS primary header or the ECSV meta),
of the whole file with that value read as 64 zeros; CSV and Parquet have their sidecar's. The sidecar is written
at ``close`` beside the catalogue's final path (``final``) before predict renames the finished file into place,
so a crash leaves the old pair, or a new sidecar beside the old file (galclip's, so predict may replace it, and
reported damaged by ``galclip check``), never a catalogue without a sidecar.

Versions: a catalogue with the default columns is written as ``galclip-catalogue/2``, in the layout it always had, so
earlier galclip still reads it; any other column list (more or other labels, RA/DEC) as ``galclip-catalogue/3``,
the same layout with the columns the file itself names, because a format-2 reader expects the fixed list (it
refuses such a CSV as damaged, and finds in the other formats only the default columns, if they are there); with
the new version an earlier galclip names the format of a CSV's or Parquet's sidecar it does not read, instead.
``read_catalogue`` reads all three, the columns each file has: format ``galclip-catalogue/1`` CSVs (provenance in
``#`` lines, ``# SHA256 = ...`` last) still read and verify.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from galclip.errors import InputError
from galclip.vocabulary import LABELS, label_info

logger = logging.getLogger(__name__)

FORMAT = "galclip-catalogue/3"  # 3: the columns follow the labels (and RA/DEC); written unless the default columns
FORMAT_2 = "galclip-catalogue/2"  # 2: plain CSV with a sidecar; ECSV and Parquet; the fixed default columns
FORMAT_1 = "galclip-catalogue/1"
READABLE_FORMATS = (FORMAT_1, FORMAT_2, FORMAT)
SIDECAR_VERSIONS = (FORMAT_2, FORMAT)  # the versions with a sidecar (format 1 had none)
FORMATS = ("fits", "csv", "ecsv", "parquet")
SUFFIXES = {".fits": "fits", ".fit": "fits", ".csv": "csv", ".ecsv": "ecsv", ".parquet": "parquet"}
SIDECAR_FORMATS = ("csv", "parquet")  # the formats whose SHA-256 is in a sidecar <name>.json
LOG_MASS_UNIT = "dex(solMass)"  # astropy's unit for log10(M/solMass); not a FITS unit


class Column(NamedTuple):
    """One catalogue column: name, numpy dtype, FITS TFORM, astropy unit ("" for none) and description (ASCII)."""

    name: str
    dtype: str
    tform: str
    unit: str
    description: str


# label -> (what the column descriptions call it, ASCII and short enough for a FITS TCOMMn; astropy unit or "")
_QUANTITIES = {
    "redshift": ("redshift", ""),
    "log_mstar": ("log10(M*/solMass)", LOG_MASS_UNIT),
    "log_metallicity": ("log10 mass-weighted metallicity, dex", "dex"),
    "age": ("mass-weighted age t_age,MW, Gyr", "Gyr"),
    "log_ssfr": ("log10(sSFR/yr^-1), 1 Gyr average, dex", "dex(1/yr)"),
}
_QUANTITY_LEN = 38  # "<quantity>: calibrated 16th percentile" fits a FITS card's 68-character string
_PREFIX = re.compile(r"^[A-Z][A-Z0-9_]*$")
_TARGETID = Column("TARGETID", "i8", "K", "", "target ID of the input galaxy")
_POSITIONS = (
    Column("RA", "f8", "D", "deg", "right ascension of the input galaxy, ICRS degrees"),
    Column("DEC", "f8", "D", "deg", "declination of the input galaxy, ICRS degrees"),
)
_TAIL = (
    Column("SIM_TOP1", "f4", "E", "", "cosine similarity of the nearest reference"),
    Column("N_NEIGHBOURS", "i2", "I", "", "neighbours used; 0: no prediction (NaN)"),
    Column("OOD", "?", "L", "", "SIM_TOP1 below the reference 1st percentile"),
)
REQUIRED = ("TARGETID", "SIM_TOP1", "N_NEIGHBOURS", "OOD")  # and at least one P_PRED, P_LO, P_HI triple
ESTIMATES = ("_PRED", "_LO", "_HI")


def _quantity(label: str) -> tuple[str, str]:
    """(what a label's column descriptions call it, its astropy unit); from its title for a label not listed."""
    if label in _QUANTITIES:
        return _QUANTITIES[label]
    title, _, kind = label_info(label)
    what = title.encode("ascii", "replace").decode("ascii")
    if kind == "log":
        return what[: _QUANTITY_LEN - 5] + ", dex", ""
    return what[:_QUANTITY_LEN], ""


def catalogue_columns(labels: Sequence[str] = LABELS, positions: bool = False) -> tuple[Column, ...]:
    """The catalogue's columns: TARGETID; RA, DEC when ``positions``; per label, in order, P_PRED, P_LO, P_HI
    (P its prefix, ``label_info``); then SIM_TOP1, N_NEIGHBOURS, OOD. The default is ``COLUMNS``. Refuses no
    label, and two labels with one prefix."""
    labels = tuple(labels)
    if not labels:
        raise InputError("a catalogue needs at least one label to predict")
    cols = [_TARGETID, *(_POSITIONS if positions else ())]
    seen: dict[str, str] = {}
    for label in labels:
        prefix = label_info(label)[1]
        if not _PREFIX.match(prefix):
            raise InputError(f"label {label!r}: its catalogue column prefix {prefix!r} is not a column name")
        if prefix in seen:
            raise InputError(
                f"labels {seen[prefix]!r} and {label!r} both give the catalogue columns {prefix}_PRED/_LO/_HI; "
                "rename one (--label NAME=COLUMN)"
            )
        seen[prefix] = label
        what, unit = _quantity(label)
        cols += [
            Column(f"{prefix}_PRED", "f8", "D", unit, f"{what}: weighted k-NN mean"),
            Column(f"{prefix}_LO", "f8", "D", unit, f"{what}: calibrated 16th percentile"),
            Column(f"{prefix}_HI", "f8", "D", unit, f"{what}: calibrated 84th percentile"),
        ]
    return (*cols, *_TAIL)


def row_dtype(columns: Sequence[Sequence[str]]) -> np.dtype:
    """The numpy dtype of catalogue rows with ``columns``."""
    return np.dtype([(c[0], c[1]) for c in columns])


def _fits_dtype(columns: Sequence[Sequence[str]]) -> np.dtype:
    # FITS binary tables are big-endian; a logical is one byte, 'T' or 'F'
    return np.dtype([(c[0], "S1" if c[1] == "?" else ">" + c[1]) for c in columns])


def _estimate_prefixes(names: Sequence[str]) -> list[str]:
    """The prefixes P with all of P_PRED, P_LO and P_HI among ``names``, in order."""
    have = set(names)
    return [n[:-5] for n in names if n.endswith("_PRED") and {n[:-5] + e for e in ESTIMATES} <= have]


def _columns_problem(names: Sequence[str]) -> str | None:
    """What a catalogue with columns ``names`` lacks (None when it is complete)."""
    if len(set(names)) != len(names):
        return f"columns {list(names)}: a column name repeats"
    missing = [n for n in REQUIRED if n not in names]
    if missing or not _estimate_prefixes(names):
        return (
            f"columns {list(names)}: a galclip catalogue has {', '.join(REQUIRED)} and at least one "
            f"P_PRED, P_LO, P_HI triple{f' (missing {missing})' if missing else ''}"
        )
    return None


COLUMNS: tuple[Column, ...] = catalogue_columns()  # the default: redshift and log_mstar, no positions
ROW_DTYPE = row_dtype(COLUMNS)
FITS_DTYPE = _fits_dtype(COLUMNS)
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


def empty_rows(n: int, columns: Sequence[Sequence[str]] = COLUMNS) -> np.ndarray:
    """(n,) catalogue rows with ``columns`` for galaxies without a prediction: NaN estimates (and positions),
    0 neighbours, not OOD."""
    rows = np.zeros(n, row_dtype(columns))
    for name, dtype, *_ in columns:
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


def _columns_record(columns: Sequence[Column]) -> list[dict[str, object]]:
    return [
        {"name": name, "dtype": np.dtype(dtype).name, "unit": unit or None, "description": text}
        for name, dtype, _, unit, text in columns
    ]


def _fits_unit(unit: str) -> str | None:
    """A column's FITS TUNIT: its unit as FITS writes it, or None for none and for a function unit (``dex(...)``,
    which FITS cannot write and astropy cannot read back; see the module's docstring)."""
    if not unit:
        return None
    import astropy.units as u

    try:
        return u.Unit(unit).to_string("fits")
    except ValueError:
        return None


def _astropy_table(meta: dict[str, object], columns: Sequence[Column]):
    """An empty astropy Table of the catalogue's columns, units, descriptions and ``meta``."""
    import astropy.units as u
    from astropy.table import Column as TableColumn
    from astropy.table import Table

    cols = [
        TableColumn(np.zeros(0, dtype), name=name, unit=u.Unit(unit) if unit else None, description=text)
        for name, dtype, _, unit, text in columns
    ]
    return Table(cols, meta=meta)


def _text_lines(rows: np.ndarray, columns: Sequence[Column], sep: str, missing: str, true: str, false: str) -> bytes:
    """(m,) rows as m text lines: shortest round-trip numbers, ``missing`` for NaN, ``true``/``false`` for OOD."""
    cols = []
    for name, dtype, *_ in columns:
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
    group. columns: the catalogue's columns (``catalogue_columns``; default ``COLUMNS``); the file is format
    ``galclip-catalogue/2`` with the default columns, else ``galclip-catalogue/3`` (``version``)."""

    def __init__(
        self,
        path: Path,
        fmt: str,
        n_rows: int,
        header: dict[str, object],
        final: Path | None = None,
        row_group: int = ROW_GROUP,
        columns: Sequence[Sequence[str]] = COLUMNS,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"catalogue format {fmt!r}: not one of {FORMATS}")
        self.columns = tuple(Column(*c) for c in columns)
        problem = _columns_problem([c.name for c in self.columns])
        if problem:
            raise ValueError(f"catalogue {path}: {problem}")
        self.dtype, self.fits_dtype = row_dtype(self.columns), _fits_dtype(self.columns)
        self.version = FORMAT_2 if [c[:4] for c in self.columns] == [c[:4] for c in COLUMNS] else FORMAT
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

            self._schema = _parquet_schema(header, self.columns, self.version)
            self._parquet = pq.ParquetWriter(str(self.path), self._schema)
            return
        self._file = open(self.path, "wb")  # open until close or abort
        if fmt == "fits":
            head = self._fits_headers()
            self._sha_at = _sha_offset(head)
            self._emit(head)
        elif fmt == "ecsv":
            head = _ecsv_header(header, self.columns, self.version)
            self._sha_at = head.index(_ECSV_SHA + _ZEROS.encode()) + len(_ECSV_SHA)
            self._emit(head)
        else:
            self._emit((",".join(self.dtype.names) + "\n").encode("ascii"))

    def _emit(self, data: bytes) -> None:
        self._sha.update(data)
        self._file.write(data)

    def _fits_headers(self) -> bytes:
        from astropy.io import fits

        primary = fits.PrimaryHDU()
        # TUNIT only for units FITS defines and astropy reads: no dex(...) (see the module's docstring)
        cols = [fits.Column(name=name, format=tform, unit=_fits_unit(unit)) for name, _, tform, unit, _ in self.columns]
        table = fits.BinTableHDU.from_columns(cols, nrows=0, name="CATALOGUE")
        table.header["NAXIS2"] = self.n_rows
        for i, (*_, text) in enumerate(self.columns, 1):  # the column descriptions TOPCAT/STILTS show
            table.header.insert(f"TFORM{i}", (f"TCOMM{i}", text), after=True)
        primary.header[_SHA_KEY] = _ZEROS  # the SHA-256 of this file with this value as zeros, filled in at close
        for hdr in (primary.header, table.header):
            hdr["GALCLIP"] = ("catalogue", self.version)
            for key, value in self.header.items():
                if isinstance(value, float) and not math.isfinite(value):
                    value = str(value)
                hdr[key] = value
        return primary.header.tostring().encode() + table.header.tostring().encode()

    def write(self, rows: np.ndarray) -> None:
        """Append (m,) rows with the writer's columns (``empty_rows(m, columns)`` filled in)."""
        if np.asarray(rows).dtype.names != self.dtype.names:
            raise ValueError(
                f"catalogue {self.path}: rows with columns {np.asarray(rows).dtype.names}, it has {self.dtype.names}"
            )
        rows = np.asarray(rows, self.dtype)
        if self.written + len(rows) > self.n_rows:
            raise ValueError(f"catalogue {self.path}: more than the {self.n_rows} rows announced")
        if self.fmt == "fits":
            out = np.empty(len(rows), self.fits_dtype)
            for name, dtype, *_ in self.columns:
                out[name] = np.where(rows[name], b"T", b"F") if dtype == "?" else rows[name]
            self._emit(out.tobytes())
        elif self.fmt == "csv":
            self._emit(_text_lines(rows, self.columns, ",", CSV_MISSING, CSV_TRUE, CSV_FALSE))
        elif self.fmt == "ecsv":
            self._emit(_text_lines(rows, self.columns, " ", "nan", "True", "False"))
        else:
            self._pending.append(rows.copy())
            if sum(len(r) for r in self._pending) >= self.row_group:
                self._flush_parquet(final=False)
        self.written += len(rows)

    def _flush_parquet(self, final: bool) -> None:
        """Write the pending rows as whole row groups (all of them when ``final``)."""
        import pyarrow as pa

        rows = np.concatenate(self._pending) if self._pending else np.zeros(0, self.dtype)
        cut = len(rows) if final else len(rows) - len(rows) % self.row_group
        for lo in range(0, cut, self.row_group):
            part = rows[lo : min(lo + self.row_group, cut)]
            arrays = [pa.array(np.ascontiguousarray(part[name])) for name in self.dtype.names]
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
            size = self.written * self.fits_dtype.itemsize
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
            "format": self.version,
            "file": self.final.name,
            "file_format": self.fmt,
            "rows": self.written,
            "bytes": self.path.stat().st_size,
            "sha256": sha256,
            "columns": _columns_record(self.columns),
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


def _ecsv_header(header: dict[str, object], columns: Sequence[Column], version: str) -> bytes:
    """The ECSV 1.0 header and column-name line, written by astropy from an empty table; ``GCSHA256`` as zeros."""
    meta = {"GALCLIP": "catalogue", "FORMAT": version, **_plain_header(header), _SHA_KEY: _ZEROS}
    buf = io.StringIO()
    _astropy_table(meta, columns).write(buf, format="ascii.ecsv")
    text = buf.getvalue().replace("\r\n", "\n").encode("ascii")
    if _ECSV_MARK not in text or text.count(_ECSV_SHA + _ZEROS.encode()) != 1 or len(text) > _HEAD // 2:
        raise ValueError("catalogue header: astropy's ECSV header lacks the GALCLIP or GCSHA256 line, or is too long")
    return text


def _parquet_schema(header: dict[str, object], columns: Sequence[Column], version: str):
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
        for name, dtype, _, unit, text in columns
    ]
    record = {"format": version, "columns": _columns_record(columns), "header": plain}
    yaml = "\n".join(
        table_meta.get_yaml_from_table(_astropy_table({"GALCLIP": "catalogue", "FORMAT": version, **plain}, columns))
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
    if not isinstance(record, dict) or record.get("format") not in SIDECAR_VERSIONS:
        fmt = record.get("format") if isinstance(record, dict) else None
        return None, [f"{side}: sidecar format {fmt!r}, this galclip reads {' and '.join(SIDECAR_VERSIONS)}"]
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
    """A galclip catalogue back in memory, verified: ((n,) rows with the columns the file has, in its order and with
    its dtypes (``ROW_DTYPE`` for the default columns), header keyword -> value). Refuses a damaged file, one of a
    format this galclip does not read, and one without TARGETID, SIM_TOP1, N_NEIGHBOURS, OOD and at least one
    P_PRED, P_LO, P_HI triple."""
    from galclip.errors import DamagedDataError

    path = Path(path)
    problems = catalogue_problems(path)
    if problems:
        raise DamagedDataError(f"{problems[0]}; write it again with 'galclip predict'")
    layout = _layout(path)
    if layout == "csv1":
        version, (arrays, header) = FORMAT_1, _read_csv1(path)
    elif layout == "csv":
        arrays, header, version = _read_csv(path)
    elif layout == "ecsv":
        from astropy.table import Table

        table = Table.read(path, format="ascii.ecsv")
        arrays = [(name, np.asarray(table[name])) for name in table.colnames]
        version = table.meta.get("FORMAT")
        skip = ("GALCLIP", "FORMAT", _SHA_KEY)
        header = {k: str(v) for k, v in table.meta.items() if k not in skip}
    elif layout == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        arrays = [
            (field.name, np.asarray(table.column(field.name).to_numpy(), np.dtype(field.type.to_pandas_dtype())))
            for field in table.schema
        ]
        record = json.loads(table.schema.metadata[_PARQUET_KEY])
        version = record.get("format")
        header = {k: str(v) for k, v in record["header"].items()}
    else:
        from astropy.io import fits

        with fits.open(path) as hdul:
            data, hdr = hdul[1].data, hdul[1].header
            arrays = [(name, np.array(data[name])) for name in hdul[1].columns.names]
            version = hdr.comments["GALCLIP"] if "GALCLIP" in hdr else None
            columns = ("TTYPE", "TFORM", "TUNIT", "TCOMM", "NAXIS", "PCOUNT", "GCOUNT", "TFIELDS", "XTENSION", "BITPIX")
            header = {k: str(v) for k, v in hdr.items() if not k.startswith(columns)}
    if version not in READABLE_FORMATS:
        raise InputError(
            f"{path}: a catalogue of format {version!r}; this galclip reads {', '.join(READABLE_FORMATS)} (read it "
            "with a galclip as new as the one that wrote it)"
        )
    problem = _columns_problem([name for name, _ in arrays])
    if problem:
        raise DamagedDataError(f"{path}: {problem}; write it again with 'galclip predict'")
    dtype = np.dtype([(name, values.dtype.newbyteorder("=")) for name, values in arrays])
    rows = np.zeros(len(arrays[0][1]), dtype)
    for name, values in arrays:
        rows[name] = values
    return rows, header


def _read_csv(path: Path) -> tuple[list[tuple[str, np.ndarray]], dict[str, str], str]:
    """A CSV with a sidecar (already verified): (column name, values) in the file's order, the provenance and the
    format version. The dtypes are the sidecar's; its column names must be the header row's."""
    from galclip.errors import DamagedDataError

    record, _ = _read_sidecar(path)
    with open(path, newline="", encoding="ascii") as f:
        reader = csv.reader(f)
        names = next(reader, [])
        body = list(reader)
    recorded = [c.get("name") if isinstance(c, dict) else None for c in record.get("columns", [])]
    if names != recorded:
        raise DamagedDataError(f"{path}: columns {names}, its sidecar records {recorded}")
    if any(len(line) != len(names) for line in body):
        raise DamagedDataError(f"{path}: a line without one value per column ({len(names)}); write it again")
    true = record.get("csv", {}).get("true", CSV_TRUE)
    arrays = []
    for column, values in zip(record["columns"], zip(*body) if body else [()] * len(names)):
        text = np.asarray(values, dtype=str)
        try:
            dtype = np.dtype(column.get("dtype"))
        except TypeError as err:
            raise DamagedDataError(f"{path}: its sidecar gives column {column['name']} the dtype {err}") from None
        arrays.append((column["name"], text == true if dtype.kind == "b" else text.astype(dtype)))
    return arrays, {k: str(v) for k, v in record["header"].items()}, record["format"]


def _read_csv1(path: Path) -> tuple[list[tuple[str, np.ndarray]], dict[str, str]]:
    """A format-1 CSV (``#`` provenance lines, ``# SHA256 = ...`` last; the default columns), already verified."""
    from galclip.errors import DamagedDataError

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
    names = names or []
    if any(name not in ROW_DTYPE.names for name in names):
        raise DamagedDataError(f"{path}: columns {names}, a format-1 catalogue has {list(ROW_DTYPE.names)}")
    arrays = []
    for j, name in enumerate(names):
        col = [b[j] for b in body]
        values = np.asarray([c == "1" for c in col], bool) if name == "OOD" else np.asarray(col, ROW_DTYPE[name])
        arrays.append((name, values))
    return arrays, header
