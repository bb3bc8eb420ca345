"""The zero-shot catalogue's four formats (FITS, CSV, ECSV, Parquet) written by CatalogueWriter and read back with
the readers astronomers use — astropy, pandas, pyarrow, csv and STILTS — with their defaults; FITS passes
fitsverify; a flipped byte, a lost or foreign sidecar and a user's own CSV are told apart."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from galclip.atomic import atomic_path
from galclip.errors import DamagedDataError, InputError
from galclip.predict import catalogue as catalogue_module
from galclip.predict.catalogue import (
    COLUMNS,
    FITS_DTYPE,
    FORMATS,
    READABLE_FORMATS,
    ROW_DTYPE,
    CatalogueWriter,
    catalogue_columns,
    catalogue_problems,
    check_output,
    empty_rows,
    format_for,
    is_galclip_catalogue,
    read_catalogue,
    row_dtype,
    sidecar_path,
)
from galclip.vocabulary import PROPERTIES

N = 300
HEADER = {
    "GCVERS": "0.4.0",
    "MODALITY": "image",
    "KNN_K": 16,
    "KNN_WGT": "inverse distance",
    "REFSET": "train",
    "NREF": 4096,
    "OODTHR": 0.8125,
    "OODPCT": 1.0,
    "INDEXSHA": "0123456789abcdef",
}
SIDECAR_FORMATS = ("csv", "parquet")
SUFFIX = {"fits": ".fits", "csv": ".csv", "ecsv": ".ecsv", "parquet": ".parquet"}
STILTS = shutil.which("stilts")
FITSVERIFY = shutil.which("fitsverify")


def _rows(n: int = N) -> np.ndarray:
    """(n,) rows: every 7th without a prediction (NaN, 0 neighbours), every 5th predicted one OOD."""
    rng = np.random.default_rng(7)
    rows = empty_rows(n)
    rows["TARGETID"] = 39627000000000000 + np.arange(n)
    ok = np.arange(n) % 7 != 3
    for name in ("Z_PRED", "Z_LO", "Z_HI", "SIM_TOP1"):
        rows[name][ok] = rng.random(ok.sum())
    for name in ("LOGMSTAR_PRED", "LOGMSTAR_LO", "LOGMSTAR_HI"):
        rows[name][ok] = 8 + 4 * rng.random(ok.sum())
    rows["N_NEIGHBOURS"][ok] = 16
    rows["OOD"] = ok & (np.arange(n) % 5 == 0)
    return rows


def _write(out: Path, fmt: str, rows: np.ndarray, block: int = 70, columns=COLUMNS) -> Path:
    """Write as predict does: to a temporary name inside atomic_path, the sidecar beside the final name."""
    with atomic_path(out) as tmp:
        writer = CatalogueWriter(tmp, fmt, len(rows), HEADER, final=out, row_group=128, columns=columns)
        try:
            for lo in range(0, len(rows), block):
                writer.write(rows[lo : lo + block])
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return out


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return _rows()


@pytest.fixture(scope="module")
def catalogues(rows, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("catalogues")
    return {fmt: _write(root / f"cat{SUFFIX[fmt]}", fmt, rows) for fmt in FORMATS}


def _copy(path: Path, dst: Path) -> Path:
    """Copy a catalogue and its sidecar (if any) to ``dst``."""
    shutil.copyfile(path, dst)
    if sidecar_path(path).exists():
        shutil.copyfile(sidecar_path(path), sidecar_path(dst))
    return dst


def _astropy(path: Path):
    from astropy.table import Table

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = Table.read(path)
    assert [str(w.message) for w in caught] == []
    return table


def _same(got, want: np.ndarray) -> None:
    """Equal in ``want``'s dtype (a CSV reader widens float32 to float64); astropy masks FITS NaNs."""
    got = np.ma.asarray(got)
    if want.dtype.kind == "f":
        got = np.ma.filled(got.astype(np.float64), np.nan)
    np.testing.assert_array_equal(np.asarray(got).astype(want.dtype), want)


def test_format_from_the_suffix_or_asked_for():
    assert [format_for(Path(f"c{s}"), None) for s in (".fits", ".fit", ".csv", ".ecsv", ".parquet", ".txt", "")] == [
        "fits",
        "fits",
        "csv",
        "ecsv",
        "parquet",
        "fits",
        "fits",
    ]
    assert format_for(Path("c.fits"), "parquet") == "parquet"
    with pytest.raises(InputError, match="--format must be one of"):
        format_for(Path("c.fits"), "hdf5")


@pytest.mark.parametrize("fmt", FORMATS)
def test_astropy_reads_every_format_with_its_defaults(catalogues, rows, fmt):
    """Table.read(path), no format argument: no warning (no UnitsWarning), every row, the same values."""
    table = _astropy(catalogues[fmt])
    assert len(table) == N and table.colnames == list(ROW_DTYPE.names)
    for name in ROW_DTYPE.names:
        _same(table[name], rows[name])
    ood = np.asarray(table["OOD"])
    assert ood.dtype == (np.int64 if fmt == "csv" else bool)  # CSV: 1/0
    assert math.isnan(np.ma.filled(table["Z_PRED"][3], np.nan))
    if fmt in ("ecsv", "parquet"):
        assert str(table["LOGMSTAR_PRED"].unit) == "dex(solMass)" and table["SIM_TOP1"].dtype == np.float32
        assert table["Z_PRED"].description == "redshift: weighted k-NN mean"
    else:
        assert table["LOGMSTAR_PRED"].unit is None
    if fmt != "csv":
        assert table.meta["GALCLIP"] == "catalogue" and table.meta["MODALITY"] == "image"
        assert table.meta["KNN_K"] == 16 and table.meta["OODTHR"] == pytest.approx(0.8125)
    if fmt == "fits":
        assert table.meta["TCOMM5"].startswith("log10(M*/solMass)")


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_catalogue_round_trip(catalogues, rows, fmt):
    back, header = read_catalogue(catalogues[fmt])
    assert back.dtype == ROW_DTYPE
    for name in ROW_DTYPE.names:
        np.testing.assert_array_equal(back[name], rows[name])  # NaN == NaN here; float64 and float32 exactly
    assert header["MODALITY"] == "image" and int(header["NREF"]) == 4096 and float(header["OODTHR"]) == 0.8125
    assert is_galclip_catalogue(catalogues[fmt]) and catalogue_problems(catalogues[fmt]) == []


def test_csv_is_plain_csv(catalogues, rows):
    """One header row, then the rows; nothing else. pandas and csv.DictReader with their defaults."""
    import pandas as pd

    path = catalogues["csv"]
    lines = path.read_text().splitlines()
    assert len(lines) == N + 1 and lines[0] == ",".join(ROW_DTYPE.names)
    assert not any(line.startswith("#") for line in lines)
    frame = pd.read_csv(path)
    assert frame.shape == (N, len(ROW_DTYPE.names)) and list(frame.columns) == list(ROW_DTYPE.names)
    assert str(frame["OOD"].dtype) == "int64" and str(frame["Z_PRED"].dtype) == "float64"
    assert str(frame["TARGETID"].dtype) == "int64" and math.isnan(frame["Z_PRED"][3])
    np.testing.assert_array_equal(frame["TARGETID"].to_numpy(), rows["TARGETID"])
    np.testing.assert_array_equal(frame["Z_PRED"].to_numpy(), rows["Z_PRED"])
    np.testing.assert_array_equal(frame["OOD"].to_numpy().astype(bool), rows["OOD"])
    with open(path, newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == N and list(records[0]) == list(ROW_DTYPE.names)
    assert records[3]["Z_PRED"] == "NaN" and math.isnan(float(records[3]["Z_PRED"]))
    assert [r["OOD"] for r in records] == ["1" if o else "0" for o in rows["OOD"]]
    assert [float(r["LOGMSTAR_HI"]) for r in records][:3] == rows["LOGMSTAR_HI"][:3].tolist()
    side = json.loads(sidecar_path(path).read_text())
    assert side["format"] == "galclip-catalogue/2" and side["file_format"] == "csv" and side["rows"] == N
    assert side["bytes"] == path.stat().st_size and side["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert side["header"] == HEADER and side["columns"][4]["unit"] == "dex(solMass)"


def test_parquet_in_pandas_and_pyarrow(catalogues, rows):
    import pandas as pd
    import pyarrow.parquet as pq

    path = catalogues["parquet"]
    frame = pd.read_parquet(path)
    assert frame.shape == (N, len(ROW_DTYPE.names)) and str(frame["OOD"].dtype) == "bool"
    assert str(frame["Z_PRED"].dtype) == "float64" and str(frame["SIM_TOP1"].dtype) == "float32"
    np.testing.assert_array_equal(frame["Z_PRED"].to_numpy(), rows["Z_PRED"])
    np.testing.assert_array_equal(frame["OOD"].to_numpy(), rows["OOD"])
    file = pq.ParquetFile(path)
    assert file.metadata.num_rows == N and file.metadata.num_row_groups == 3  # 128 + 128 + 44: streamed
    schema = file.schema_arrow
    assert schema.field("LOGMSTAR_PRED").metadata[b"unit"] == b"dex(solMass)"
    assert json.loads(schema.metadata[b"galclip"])["header"] == HEADER
    assert json.loads(sidecar_path(path).read_text())["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _stilts(*args: str) -> str:
    if STILTS is None:
        pytest.skip("stilts is not installed (Debian package stilts)")
    done = subprocess.run([STILTS, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("fmt", ["csv", "ecsv", "fits"])
def test_stilts_reads_the_catalogue(catalogues, fmt):
    path = catalogues[fmt]
    assert _stilts("tpipe", f"in={path}", f"ifmt={fmt}", "omode=count").split() == ["columns:", "10", "rows:", str(N)]
    meta = _stilts("tpipe", f"in={path}", f"ifmt={fmt}", "omode=meta")
    assert "Z_PRED(Double)" in meta and "TARGETID(Long)" in meta
    assert ("OOD(Short)" if fmt == "csv" else "OOD(Boolean)") in meta
    if fmt == "ecsv":
        assert "LOGMSTAR_PRED(Double)/dex(solMass)" in meta and "MODALITY" in meta
    table = _stilts("tpipe", f"in={path}", f"ifmt={fmt}")  # the plain listing
    body = [line for line in table.splitlines() if line.startswith("| 3962")]
    assert len(body) == N
    assert body[3].split("|")[2].strip() == ""  # a missing value is null


def test_fits_passes_fitsverify(catalogues):
    if FITSVERIFY is None:
        pytest.skip("fitsverify is not installed (Debian package fitsverify)")
    done = subprocess.run(
        [FITSVERIFY, str(catalogues["fits"])], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Verification found 0 warning(s) and 0 error(s)" in done.stdout, done.stdout
    assert catalogues["fits"].stat().st_size % 2880 == 0


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", [0.02, 0.5, 0.98])
def test_a_flipped_byte_is_reported(catalogues, tmp_path, fmt, where):
    """Near the start (the header), the middle and the end (a footer): check and read_catalogue refuse."""
    from galclip.integrity import check_path

    path = _copy(catalogues[fmt], tmp_path / f"c{SUFFIX[fmt]}")
    data = bytearray(path.read_bytes())
    offset = int(where * len(data))
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))
    problems = catalogue_problems(path)
    assert problems and str(path) in problems[0]
    result = check_path(path)
    assert not result["ok"] and "write it again with 'galclip predict'" in result["problems"][0]
    with pytest.raises(DamagedDataError, match="write it again with 'galclip predict'"):
        read_catalogue(path)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_lost_or_foreign_sidecar_is_reported(catalogues, tmp_path, fmt):
    path = _copy(catalogues[fmt], tmp_path / f"c{SUFFIX[fmt]}")
    side = sidecar_path(path)
    record = json.loads(side.read_text())
    side.unlink()
    problems = catalogue_problems(path)
    assert len(problems) == 1 and side.name in problems[0]
    # a Parquet file still carries its mark; a CSV without its sidecar is anybody's CSV
    assert is_galclip_catalogue(path) == (fmt == "parquet")
    with pytest.raises(DamagedDataError, match="write it again"):
        read_catalogue(path)
    other = _write(tmp_path / f"other{SUFFIX[fmt]}", fmt, _rows(N - 1))  # another catalogue's sidecar
    shutil.copyfile(sidecar_path(other), side)
    assert is_galclip_catalogue(path) and "its sidecar records" in catalogue_problems(path)[0]
    record["header"]["MODALITY"] = "spectrum"  # provenance edited: the sidecar's own SHA-256 tells
    side.write_text(json.dumps(record))
    assert "does not match its own SHA-256" in catalogue_problems(path)[0]
    side.write_text(json.dumps(record)[:-9])  # cut: still marked, no longer JSON
    assert is_galclip_catalogue(path) and "not readable JSON" in catalogue_problems(path)[0]


def test_a_users_csv_is_not_taken_for_galclips(catalogues, tmp_path):
    user = tmp_path / "mine.csv"
    user.write_text("TARGETID,Z\n1,0.5\n")
    assert not is_galclip_catalogue(user)
    assert "not a galclip catalogue" in catalogue_problems(user)[0]
    with pytest.raises(InputError, match="not a galclip catalogue.*--overwrite"):
        check_output(user)
    check_output(user, overwrite=True)
    check_output(catalogues["csv"])  # galclip's own: predict may replace it
    fresh = tmp_path / "new.csv"
    sidecar_path(fresh).write_text('{"mine": 1}')  # a user's file where the sidecar would go
    with pytest.raises(InputError, match="not a galclip catalogue sidecar"):
        check_output(fresh)
    check_output(fresh, fmt="fits")  # a FITS catalogue has no sidecar
    with pytest.raises(InputError, match="is a folder"):
        check_output(tmp_path)


def test_written_atomically_with_its_sidecar(rows, tmp_path):
    """No temporaries are left; a failed write leaves the previous pair; a sidecar newer than its CSV (a crash
    between the two renames) is galclip's and reported damaged."""
    out = _write(tmp_path / "cat.csv", "csv", rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat.csv", "cat.csv.json"]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        writer = CatalogueWriter(tmp, "csv", N, HEADER, final=out)
        writer.write(rows[:10])
        writer.abort()
        raise RuntimeError("killed")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(ValueError, match="announced"):
        short = CatalogueWriter(tmp_path / "short.csv", "csv", 3, {})
        short.write(rows[:2])
        short.close()
    assert not sidecar_path(tmp_path / "short.csv").exists()
    other = tmp_path / "other"
    other.mkdir()
    _write(other / "cat.csv", "csv", rows[:-1])
    shutil.copyfile(other / "cat.csv.json", tmp_path / "cat.csv.json")
    assert is_galclip_catalogue(out) and "its sidecar records" in catalogue_problems(out)[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_catalogue(tmp_path, fmt):
    path = _write(tmp_path / f"e{SUFFIX[fmt]}", fmt, empty_rows(0))
    back, header = read_catalogue(path)
    assert len(back) == 0 and header["MODALITY"] == "image"
    assert len(_astropy(path)) == 0


def test_format_1_csv_still_reads(rows, tmp_path):
    """A CSV of galclip-catalogue/1: '# KEY = value' lines, the rows, '# SHA256 = ...' over every byte before."""
    lines = ["# galclip catalogue galclip-catalogue/1"] + [f"# {k} = {v}" for k, v in HEADER.items()]
    lines += [f"# {name} [dex(solMass)]" for name in ("LOGMSTAR_PRED", "LOGMSTAR_LO", "LOGMSTAR_HI")]
    lines.append(",".join(ROW_DTYPE.names))
    for r in rows[:20]:
        numbers = ["nan" if math.isnan(r[n]) else f"{r[n]:.9g}" for n in ROW_DTYPE.names[1:-2]]
        lines.append(",".join([str(r["TARGETID"]), *numbers, str(r["N_NEIGHBOURS"]), "1" if r["OOD"] else "0"]))
    body = ("\n".join(lines) + "\n").encode()
    path = tmp_path / "old.csv"
    path.write_bytes(body + f"# SHA256 = {hashlib.sha256(body).hexdigest()}\n".encode())
    assert is_galclip_catalogue(path) and catalogue_problems(path) == []
    back, header = read_catalogue(path)
    assert header["MODALITY"] == "image" and len(back) == 20
    np.testing.assert_array_equal(back["OOD"], rows["OOD"][:20])
    np.testing.assert_allclose(back["Z_PRED"], rows["Z_PRED"][:20], rtol=1e-8, equal_nan=True)
    path.write_bytes(body.replace(b"image", b"imagf") + f"# SHA256 = {hashlib.sha256(body).hexdigest()}\n".encode())
    assert "do not match" in catalogue_problems(path)[0]


def test_predict_help_lists_every_format():
    from click.testing import CliRunner

    from galclip.cli import main

    out = CliRunner().invoke(main, ["predict", "--help"]).output
    assert "[fits|csv|ecsv|parquet|hats]" in out


# every PROVABGS property, an extra label and the input's positions: columns that follow the labels
LABELLED = catalogue_columns((*PROPERTIES, "dn4000"), positions=True)
PREFIXES = ("Z", "LOGMSTAR", "LOGZMW", "TAGEMW", "LOGSSFR", "DN4000")


def _labelled_rows(n: int = N) -> np.ndarray:
    """(n,) rows of LABELLED: every 7th without a prediction (NaN estimates, but its position), every 5th OOD."""
    rng = np.random.default_rng(11)
    rows = empty_rows(n, LABELLED)
    rows["TARGETID"] = 39627000000000000 + np.arange(n)
    rows["RA"], rows["DEC"] = 360 * rng.random(n), np.degrees(np.arcsin(2 * rng.random(n) - 1))
    ok = np.arange(n) % 7 != 3
    for i, prefix in enumerate(PREFIXES):
        centre = i + rng.random(ok.sum())
        rows[f"{prefix}_PRED"][ok], rows[f"{prefix}_LO"][ok], rows[f"{prefix}_HI"][ok] = (
            centre,
            centre - 0.1,
            centre + 0.2,
        )
    rows["SIM_TOP1"][ok] = rng.random(ok.sum())
    rows["N_NEIGHBOURS"][ok] = 16
    rows["OOD"] = ok & (np.arange(n) % 5 == 0)
    return rows


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[np.ndarray, dict[str, Path]]:
    root = tmp_path_factory.mktemp("labelled")
    rows = _labelled_rows()
    return rows, {fmt: _write(root / f"lab{SUFFIX[fmt]}", fmt, rows, columns=LABELLED) for fmt in FORMATS}


def test_the_columns_follow_the_labels():
    assert catalogue_columns(("redshift", "log_mstar"), positions=False) == COLUMNS
    assert row_dtype(COLUMNS) == ROW_DTYPE and FITS_DTYPE.names == ROW_DTYPE.names
    assert ROW_DTYPE.names == (
        "TARGETID",
        *("Z_PRED", "Z_LO", "Z_HI", "LOGMSTAR_PRED", "LOGMSTAR_LO", "LOGMSTAR_HI"),
        *("SIM_TOP1", "N_NEIGHBOURS", "OOD"),
    )
    names = [c.name for c in LABELLED]
    assert names == [
        "TARGETID",
        "RA",
        "DEC",
        *(f"{p}{e}" for p in PREFIXES for e in ("_PRED", "_LO", "_HI")),
        "SIM_TOP1",
        "N_NEIGHBOURS",
        "OOD",
    ]
    by_name = {c.name: c for c in LABELLED}
    assert by_name["RA"].unit == by_name["DEC"].unit == "deg" and by_name["RA"].dtype == "f8"
    assert by_name["TAGEMW_HI"].unit == "Gyr" and by_name["DN4000_PRED"].unit == ""
    assert by_name["LOGZMW_PRED"].description == "log10 mass-weighted metallicity, dex: weighted k-NN mean"
    assert by_name["LOGSSFR_LO"].description.endswith("dex: calibrated 16th percentile")
    assert by_name["Z_HI"].description == "redshift: calibrated 84th percentile"
    for c in LABELLED:  # FITS TCOMMn: ASCII, within one card
        assert c.description.isascii() and len(c.description) <= 68, c
    with pytest.raises(InputError, match="'redshift' and 'z' both give the catalogue columns Z_PRED"):
        catalogue_columns(("redshift", "z"), positions=False)
    with pytest.raises(InputError, match="at least one label"):
        catalogue_columns((), positions=True)
    with pytest.raises(ValueError, match="at least one P_PRED, P_LO, P_HI triple"):
        CatalogueWriter(Path("unused.csv"), "csv", 0, {}, columns=[c for c in COLUMNS if c.name != "Z_HI"][:1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_catalogue_of_every_property_positions_and_an_extra_label(labelled, fmt):
    """Round trip through read_catalogue; astropy (no warning, the units), pandas with their defaults."""
    import pandas as pd

    rows, paths = labelled
    path = paths[fmt]
    back, header = read_catalogue(path)
    assert back.dtype == row_dtype(LABELLED) and header["MODALITY"] == "image"
    for name in back.dtype.names:
        np.testing.assert_array_equal(back[name], rows[name])
    assert catalogue_problems(path) == [] and is_galclip_catalogue(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = _astropy(path)
    assert table.colnames == list(back.dtype.names) and len(table) == N
    for name in back.dtype.names:
        _same(table[name], rows[name])
    if fmt == "csv":  # a plain CSV has no units: the sidecar holds them
        units = {c["name"]: c["unit"] for c in json.loads(sidecar_path(path).read_text())["columns"]}
        assert units["TAGEMW_PRED"] == "Gyr" and units["RA"] == units["DEC"] == "deg"
        assert units["LOGSSFR_HI"] == "dex(1/yr)" and units["DN4000_PRED"] is None
        frame = pd.read_csv(path)
    else:
        assert str(table["TAGEMW_PRED"].unit) == "Gyr" and str(table["TAGEMW_LO"].unit) == "Gyr"
        assert str(table["RA"].unit) == "deg" and str(table["DEC"].unit) == "deg"
        assert table["DN4000_PRED"].unit is None
        if fmt == "fits":  # no TUNIT for a dex column; its TCOMMn says dex
            assert table["LOGZMW_PRED"].unit is None and table["LOGSSFR_PRED"].unit is None
            at = table.colnames.index("LOGZMW_PRED") + 1
            assert "dex" in table.meta[f"TCOMM{at}"]
        else:
            assert str(table["LOGZMW_PRED"].unit) == "dex" and table["LOGSSFR_PRED"].unit.to_string() == "dex(1 / yr)"
        frame = pd.read_parquet(path) if fmt == "parquet" else table.to_pandas()
    assert list(frame.columns) == list(back.dtype.names) and len(frame) == N
    np.testing.assert_array_equal(frame["TAGEMW_PRED"].to_numpy(np.float64), rows["TAGEMW_PRED"])
    np.testing.assert_array_equal(frame["RA"].to_numpy(), rows["RA"])
    np.testing.assert_array_equal(frame["TARGETID"].to_numpy(), rows["TARGETID"])


def test_the_format_version_follows_the_columns(catalogues, labelled):
    """The default columns stay galclip-catalogue/2 (as earlier galclip reads it); others are /3."""
    from astropy.io import fits
    from astropy.table import Table

    assert READABLE_FORMATS == ("galclip-catalogue/1", "galclip-catalogue/2", "galclip-catalogue/3")
    for paths, version in ((catalogues, "galclip-catalogue/2"), (labelled[1], "galclip-catalogue/3")):
        for fmt in SIDECAR_FORMATS:
            assert json.loads(sidecar_path(paths[fmt]).read_text())["format"] == version
        assert Table.read(paths["ecsv"]).meta["FORMAT"] == version
        assert fits.getheader(paths["fits"], 1).comments["GALCLIP"] == version


def test_a_catalogue_without_its_columns_or_of_a_newer_format_is_refused(tmp_path, monkeypatch):
    columns = [c for c in COLUMNS if c.name not in ("OOD", "Z_LO")]
    monkeypatch.setattr(catalogue_module, "_columns_problem", lambda names: None)  # let the writer write it
    path = _write(tmp_path / "lacking.ecsv", "ecsv", empty_rows(3, columns), columns=columns)
    monkeypatch.undo()
    with pytest.raises(DamagedDataError, match=r"columns \['TARGETID', 'Z_PRED', 'Z_HI'.*missing \['OOD'\]"):
        read_catalogue(path)
    monkeypatch.setattr(catalogue_module, "FORMAT", "galclip-catalogue/9")
    for fmt in ("ecsv", "fits"):  # (a CSV's or Parquet's sidecar of a newer format is a problem check reports)
        newer = _write(tmp_path / f"newer{SUFFIX[fmt]}", fmt, _labelled_rows(4), columns=LABELLED)
        with pytest.raises(InputError, match="a catalogue of format 'galclip-catalogue/9'; this galclip reads"):
            read_catalogue(newer)


def test_fits_with_labelled_columns_passes_fitsverify(labelled):
    if FITSVERIFY is None:
        pytest.skip("fitsverify is not installed (Debian package fitsverify)")
    path = labelled[1]["fits"]
    done = subprocess.run([FITSVERIFY, str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert "Verification found 0 warning(s) and 0 error(s)" in done.stdout, done.stdout


@pytest.mark.parametrize("fmt", ["csv", "ecsv", "fits"])
def test_stilts_reads_labelled_columns(labelled, fmt):
    path = labelled[1][fmt]
    count = _stilts("tpipe", f"in={path}", f"ifmt={fmt}", "omode=count").split()
    assert count == ["columns:", str(len(LABELLED)), "rows:", str(N)]
    meta = _stilts("tpipe", f"in={path}", f"ifmt={fmt}", "omode=meta")
    assert "TAGEMW_PRED(Double)" in meta and "DN4000_HI(Double)" in meta and "RA(Double)" in meta
    if fmt != "csv":
        assert "TAGEMW_PRED(Double)/Gyr" in meta and "RA(Double)/deg" in meta
