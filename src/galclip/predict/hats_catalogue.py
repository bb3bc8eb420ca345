"""The zero-shot catalogue as a HATS catalogue: HEALPix-partitioned Parquet that ``lsdb.read_hats`` opens.

Written with hats-import's in-process pipeline (a local Dask client of one worker, two threads, unless a client is
given) into a temporary folder beside OUT, which is then swapped into place whole (``galclip.atomic.atomic_dir``),
so a crash leaves the previous catalogue or none. The folder is the HATS layout plus galclip's sidecar::

    OUT/
      hats.properties, properties     HATS table properties (name, row count, RA/Dec columns, order)
      partition_info.csv              the HEALPix pixels (Norder, Npix) holding rows
      point_map.fits, skymap.fits     row counts per HEALPix pixel
      dataset/_metadata, _common_metadata
      dataset/Norder=K/Dir=D/Npix=P.parquet   the rows of pixel P at order K, sorted by _healpix_29, targetid
      galclip-catalogue.json          format galclip-hats/1: the metadata, columns, row count, and the size and
                                      SHA-256 of every other file; sealed with its own SHA-256

Each row keeps every column of the table given (plus HATS's ``_healpix_29``, the order-29 nested HEALPix index).
The packages ``hats`` and ``hats-import`` are an optional extra (``pip install 'galclip[hats]'``), imported only
inside ``write_hats``; ``verify_hats`` and ``read_hats_table`` need pyarrow alone.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np

from galclip.errors import DamagedDataError, InputError

logger = logging.getLogger(__name__)

FORMAT = "galclip-hats/1"
SIDECAR = "galclip-catalogue.json"
POSITION_COLUMNS = ("ra", "dec")  # degrees; the RA and Dec columns (either case)
TARGETID_COLUMN = "targetid"  # (either case)
HATS_COLUMNS = ("_healpix_29", "Norder", "Dir", "Npix")  # added by HATS: not allowed in the table given
HIGHEST_ORDER = 7  # finest HEALPix order of a partition (0.21 deg²); hats-import's cost grows as 4**order
PIXEL_THRESHOLD = 1_000_000  # most rows in one partition
INSTALL_HINT = "--format hats needs the optional packages: pip install 'galclip[hats]'"
_POSITION_HINT = "give RA and Dec (degrees) per galaxy, or write another format (--format fits, csv, ecsv or parquet)"
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_DATA_FILE = re.compile(r"dataset/Norder=(\d+)/Dir=\d+/Npix=(\d+)\.parquet")


def _import_hats():
    """(hats_import, distributed.Client, ParquetPyarrowReader), or InputError naming the extra to install."""
    try:
        import hats  # noqa: F401
        import hats_import
        from dask.distributed import Client
        from hats_import.catalog.file_readers import ParquetPyarrowReader
    except ImportError as err:
        raise InputError(f"{INSTALL_HINT} ({err})") from err
    return hats_import, Client, ParquetPyarrowReader


def _column(table: dict[str, np.ndarray], name: str) -> str | None:
    """The key of column ``name`` in ``table`` (as given, or upper case), or None."""
    for key in (name, name.upper()):
        if key in table:
            return key
    return None


def _check_table(table: dict[str, np.ndarray]) -> tuple[int, str, str, str]:
    """Check the columns (each (n,), same n; ra, dec finite degrees; targetid integers, unique):
    (n, ra key, dec key, targetid key), or InputError naming the column or the first bad targetid."""
    if not table:
        raise InputError(f"--format hats needs RA and Dec per galaxy: the catalogue has no columns; {_POSITION_HINT}")
    lengths = {key: np.shape(values) for key, values in table.items()}
    first = next(iter(lengths.values()))
    n = first[0] if len(first) == 1 else -1
    bad = [f"{k} {s}" for k, s in lengths.items()] if any(s != (n,) for s in lengths.values()) else []
    if bad:
        raise InputError(f"catalogue columns: each must be an (n,) array, one n for all; shapes {', '.join(bad)}")
    reserved = [key for key in table if key in HATS_COLUMNS or not isinstance(key, str)]
    if reserved:
        raise InputError(f"catalogue columns {reserved}: names HATS reserves for itself; rename them")
    ra_key, dec_key = (_column(table, name) for name in POSITION_COLUMNS)
    for key, name in ((ra_key, "ra"), (dec_key, "dec")):
        if key is None:
            raise InputError(
                f"--format hats needs RA and Dec per galaxy: the catalogue has no {name!r} column; {_POSITION_HINT}"
            )
    tid_key = _column(table, TARGETID_COLUMN)
    if tid_key is None or not np.issubdtype(np.asarray(table[tid_key]).dtype, np.integer):
        raise InputError(
            f"catalogue: --format hats needs an integer {TARGETID_COLUMN!r} column; got columns {sorted(table)}"
        )
    if n == 0:
        raise InputError(f"--format hats needs RA and Dec per galaxy: the catalogue has no rows; {_POSITION_HINT}")
    ra, dec = (np.asarray(table[k], np.float64) for k in (ra_key, dec_key))
    finite = np.isfinite(ra) & np.isfinite(dec)
    if not finite.any():
        raise InputError(
            f"--format hats needs RA and Dec per galaxy: {ra_key!r}/{dec_key!r} are NaN for all {n} "
            f"galaxies (the input gives no positions); {_POSITION_HINT}"
        )
    targetid = np.asarray(table[tid_key], np.int64)
    for bad, what in (
        (~finite, "has no RA/Dec (NaN)"),
        (finite & ((ra < 0) | (ra > 360) | (np.abs(dec) > 90)), "has RA outside [0, 360] or Dec outside [-90, 90]"),
    ):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            more = int(bad.sum()) - 1
            raise InputError(
                f"--format hats needs RA and Dec per galaxy: targetid {targetid[i]} (row {i}) {what}"
                f"{f', and {more} more rows' if more else ''}; {_POSITION_HINT}"
            )
    ids, counts = np.unique(targetid, return_counts=True)
    if (counts > 1).any():
        raise InputError(
            f"catalogue: targetid {ids[counts > 1][0]} appears {counts[counts > 1][0]} times; --format hats "
            "needs one row per galaxy"
        )
    return n, ra_key, dec_key, tid_key


def _sidecar_marked(path: Path) -> bool:
    """Whether ``path`` holds a galclip HATS sidecar (a damaged one too, so it may be replaced and is reported)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'"galclip-hats/' in head


def is_galclip_hats(path: Path) -> bool:
    """Whether ``path`` is a folder galclip wrote with ``write_hats`` (its sidecar ``galclip-catalogue.json``)."""
    path = Path(path)
    return path.is_dir() and _sidecar_marked(path / SIDECAR)


def check_hats_output(out: Path, overwrite: bool = False) -> None:
    """Refuse ``out`` when it is a file, or a folder that is neither empty nor an earlier galclip HATS catalogue
    (it would be replaced), unless ``overwrite`` (folders only)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"{out}: exists and is a file; OUT for --format hats is a folder to write, e.g. {out.with_suffix('')}_hats"
        )
    if overwrite or not out.exists() or is_galclip_hats(out) or not any(out.iterdir()):
        return
    raise InputError(
        f"{out}: exists and is not a galclip HATS catalogue (no {SIDECAR}); it would be replaced. "
        "Choose a new output path, or pass --overwrite to replace it"
    )


def _arrow_table(table: dict[str, np.ndarray], tid_key: str):
    """The rows as a pyarrow Table, columns in the order given, targetid as int64."""
    import pyarrow as pa

    arrays = {k: np.asarray(v, np.int64) if k == tid_key else np.asarray(v) for k, v in table.items()}
    return pa.table({k: pa.array(v) for k, v in arrays.items()})


@contextmanager
def _quiet_dask_logs() -> Iterator[None]:
    """Lower the ``distributed`` logger to WARNING while galclip's own local client starts, runs and stops (its
    INFO lines about the scheduler and the worker say nothing to a galclip user); restored after."""
    dask_logger = logging.getLogger("distributed")
    level = dask_logger.level
    dask_logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        dask_logger.setLevel(level)


def _import(build: Path, rows_file: Path, name: str, keys: tuple[str, str, str], n: int, client) -> Path:
    """Run hats-import on ``rows_file`` into ``build/name`` (scratch under ``build``); returns that folder."""
    hats_import, Client, ParquetPyarrowReader = _import_hats()
    ra_key, dec_key, tid_key = keys
    args = hats_import.ImportArguments(
        output_path=build,
        output_artifact_name=name,
        input_file_list=[rows_file],
        file_reader=ParquetPyarrowReader(),
        ra_column=ra_key,
        dec_column=dec_key,
        sort_columns=tid_key,
        highest_healpix_order=HIGHEST_ORDER,
        pixel_threshold=PIXEL_THRESHOLD,
        expected_total_rows=n,
        addl_hats_properties={"hats_cols_survey_id": tid_key, "obs_title": f"galclip zero-shot catalogue {name}"},
        tmp_dir=build / "scratch",
        dask_tmp=build / "dask",
        resume=False,
        progress_bar=False,
    )
    if client is not None:
        hats_import.pipeline_with_client(args, client)
    else:
        opts = dict(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None)
        with _quiet_dask_logs(), Client(local_directory=str(build / "dask"), **opts) as local:
            hats_import.pipeline_with_client(args, local)
    return build / name


def _file_records(folder: Path) -> list[dict[str, object]]:
    """Per file under ``folder`` (the sidecar excepted), sorted: relative path, size and SHA-256; each fsynced."""
    from galclip.provenance import sha256_file

    records = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SIDECAR):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        rel = path.relative_to(folder).as_posix()
        records.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return records


def _write_sidecar(folder: Path, record: dict[str, object]) -> None:
    """``folder/galclip-catalogue.json``: ``record`` plus the files' sizes and SHA-256s, sealed with its own."""
    from galclip.atomic import json_ready
    from galclip.provenance import canonical_sha256

    record = json_ready({**record, "files": _file_records(folder)})
    record["sidecar_sha256"] = canonical_sha256(record)
    (folder / SIDECAR).write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def write_hats(
    table: dict[str, np.ndarray],
    out: Path,
    name: str,
    metadata: dict,
    *,
    overwrite: bool = False,
    client=None,
) -> Path:
    """Write the catalogue ``table`` (column -> (n,) array, with ``ra`` and ``dec`` in degrees and an integer
    ``targetid``; the three names in either case) as the HATS catalogue ``name`` in the folder ``out``, with the
    sidecar ``out/galclip-catalogue.json`` holding ``metadata`` (JSON values; numpy and NaN made plain).

    client: a ``dask.distributed.Client`` to run on; default a local in-process one (1 worker, 2 threads).
    Refuses (InputError) missing, all-NaN or partly NaN positions, duplicate targetids, a bad ``name``, an ``out``
    that is not an earlier galclip HATS catalogue (unless ``overwrite``), and missing optional packages."""
    from galclip.atomic import atomic_dir, fsync_path
    from galclip.version import __version__

    out = Path(out)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(
            f"HATS catalogue name {name!r}: use letters, digits, '.', '_' and '-' only, e.g. 'galclip_zeroshot'"
        )
    n, ra_key, dec_key, tid_key = _check_table(table)
    check_hats_output(out, overwrite)
    _import_hats()
    import pyarrow.parquet as pq

    start = time.perf_counter()
    rows = _arrow_table(table, tid_key)
    with atomic_dir(out) as tmp:
        build = tmp / ".build"
        build.mkdir()
        rows_file = build / "rows.parquet"
        pq.write_table(rows, rows_file)
        built = _import(build, rows_file, name, (ra_key, dec_key, tid_key), n, client)
        for entry in built.iterdir():
            os.replace(entry, tmp / entry.name)
        shutil.rmtree(build)
        _write_sidecar(
            tmp,
            {
                "format": FORMAT,
                "catalog_name": name,
                "rows": n,
                "ra_column": ra_key,
                "dec_column": dec_key,
                "targetid_column": tid_key,
                "columns": [{"name": f.name, "dtype": str(f.type)} for f in rows.schema],
                "builder": {"galclip": __version__, "hats": version("hats"), "hats-import": version("hats-import")},
                "metadata": metadata,
            },
        )
        for folder in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: -len(p.parts)):
            fsync_path(folder)
    fsync_path(out.resolve().parent)
    logger.info("HATS catalogue %s: %d rows, %.1f s", out, n, time.perf_counter() - start)
    return out


def _read_sidecar(path: Path) -> tuple[dict | None, list[str]]:
    """The sidecar of the HATS catalogue ``path``, checked against its own SHA-256: (record, []) or
    (None, [problem])."""
    from galclip.provenance import canonical_sha256

    side = path / SIDECAR
    if not path.is_dir():
        return None, [f"{path}: not a folder; a galclip HATS catalogue is a folder with {SIDECAR}"]
    if not side.exists():
        return None, [f"{path}: its sidecar {SIDECAR} is missing (not galclip's, or the sidecar was lost)"]
    try:
        record = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        return None, [f"{side}: not readable JSON ({err}) (damaged)"]
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        fmt = record.get("format") if isinstance(record, dict) else None
        return None, [f"{side}: sidecar format {fmt!r}, this galclip reads {FORMAT!r}"]
    if record.get("sidecar_sha256") != canonical_sha256({k: v for k, v in record.items() if k != "sidecar_sha256"}):
        return None, [f"{side}: does not match its own SHA-256 (damaged)"]
    return record, []


def _data_files(path: Path) -> list[str]:
    """The partition files ``dataset/Norder=K/Dir=D/Npix=P.parquet`` under ``path``, relative, in (K, P) order."""
    rels = [p.relative_to(path).as_posix() for p in (path / "dataset").rglob("Npix=*.parquet")]
    found = [(int(m[1]), int(m[2]), rel) for rel in rels if (m := _DATA_FILE.fullmatch(rel))]
    return [rel for *_, rel in sorted(found)]


def _properties_rows(path: Path) -> int | None:
    """``hats_nrows`` from ``path/hats.properties`` (key=value lines), or None."""
    try:
        lines = (path / "hats.properties").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "hats_nrows" and value.strip().isdigit():
            return int(value.strip())
    return None


def verify_hats(path: Path) -> list[str]:
    """What is wrong with the galclip HATS catalogue ``path``: its sidecar, every file's size and SHA-256 against
    the sidecar's, partition files it does not list, and the row count (Parquet footers, ``hats.properties``)
    against its own; empty when intact. Reads every file once; needs pyarrow only."""
    import pyarrow.parquet as pq

    from galclip.provenance import sha256_file

    path = Path(path)
    record, problems = _read_sidecar(path)
    if record is None:
        return problems
    damaged = set()
    for entry in record.get("files", []):
        rel, file = entry["path"], path / entry["path"]
        if not file.is_file():
            problems.append(f"{file}: missing (its sidecar lists it)")
        elif file.stat().st_size != entry["bytes"]:
            problems.append(
                f"{file}: {file.stat().st_size} bytes, its sidecar records {entry['bytes']} (damaged or cut)"
            )
        elif sha256_file(file) != entry["sha256"]:
            problems.append(f"{file}: its bytes do not match the SHA-256 its sidecar records (damaged)")
        else:
            continue
        damaged.add(rel)
    listed = {entry["path"] for entry in record.get("files", [])}
    data = _data_files(path)
    problems += [
        f"{path / rel}: a partition file its sidecar does not list (added later?)" for rel in data if rel not in listed
    ]
    if damaged:
        return problems
    rows = sum(pq.read_metadata(path / rel).num_rows for rel in data)
    if rows != record.get("rows"):
        problems.append(f"{path}: {rows} rows in its partition files, its sidecar records {record.get('rows')}")
    if _properties_rows(path) != record.get("rows"):
        problems.append(
            f"{path / 'hats.properties'}: hats_nrows {_properties_rows(path)}, its sidecar records {record.get('rows')}"
        )
    return problems


def read_hats_table(path: Path, verify: bool = True) -> dict[str, np.ndarray]:
    """The rows of the galclip HATS catalogue ``path``: column -> (n,) array, the columns written (HATS's own
    ``_healpix_29`` left out), rows in partition order (Norder, Npix), then by targetid within a partition.
    verify: check it first (``verify_hats``), DamagedDataError naming the first problem. pyarrow only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if verify and (problems := verify_hats(path)):
        raise DamagedDataError(f"{problems[0]}; write it again with 'galclip predict --format hats'")
    record, problems = _read_sidecar(path)
    if record is None:
        raise DamagedDataError(problems[0])
    names = [c["name"] for c in record["columns"]]
    parts = [pq.ParquetFile(path / rel).read(columns=names) for rel in _data_files(path)]
    rows = pa.concat_tables(parts) if parts else None
    if rows is None:
        return {name: np.zeros(0) for name in names}
    return {name: rows.column(name).to_numpy() for name in names}
