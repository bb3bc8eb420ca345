"""The zero-shot catalogue as a HATS catalogue (galclip.predict.hats_catalogue): written with hats-import, opened and
cross-matched by LSDB, verified against its sidecar's SHA-256s, and refused without positions or over a foreign
folder. Needs the optional extra (pip install 'galclip[hats]') and lsdb; skipped without them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hats_import", reason="the optional extra is not installed: pip install 'galclip[hats]'")
lsdb = pytest.importorskip("lsdb", reason="lsdb is not installed (pip install lsdb): it opens and cross-matches")

import dask  # noqa: E402  (installed with lsdb)

from galclip.errors import DamagedDataError, InputError  # noqa: E402
from galclip.predict.hats_catalogue import (  # noqa: E402
    SIDECAR,
    is_galclip_hats,
    read_hats_table,
    verify_hats,
    write_hats,
)

N = 200
PATCH = (150.0, 152.0, 1.0, 3.0)  # RA min, RA max, Dec min, Dec max (degrees): 4 deg²
META = {"GCVERS": "0.2.0", "KNN_K": 16, "REFSET": "train", "OOD_THR": float("nan")}


def _table(n: int = N, seed: int = 5) -> dict[str, np.ndarray]:
    """(n,) catalogue rows at random positions on PATCH, targetids shuffled."""
    rng = np.random.default_rng(seed)
    ra_lo, ra_hi, dec_lo, dec_hi = PATCH
    return {
        "targetid": rng.permutation(n).astype(np.int64) + 39627000000000000,
        "ra": rng.uniform(ra_lo, ra_hi, n),
        "dec": np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(dec_lo)), np.sin(np.radians(dec_hi)), n))),
        "Z_PRED": rng.uniform(0.0, 0.6, n),
        "SIM_TOP1": rng.uniform(0.5, 1.0, n).astype(np.float32),
        "N_NEIGHBOURS": np.full(n, 16, np.int16),
        "OOD": rng.random(n) < 0.1,
    }


@pytest.fixture(scope="module")
def table() -> dict[str, np.ndarray]:
    return _table()


@pytest.fixture(scope="module")
def written(table, tmp_path_factory) -> Path:
    """The 200-row HATS catalogue, written once (read-only: copy it to change it)."""
    return write_hats(table, tmp_path_factory.mktemp("hats") / "zeroshot", "galclip_zeroshot", META)


def _copy(path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(path, tmp_path / path.name))


def _data_file(path: Path) -> Path:
    files = sorted((path / "dataset").rglob("Npix=*.parquet"))
    assert files
    return files[0]


def test_lsdb_opens_it(written, table):
    assert is_galclip_hats(written)
    with dask.config.set(scheduler="synchronous"):
        frame = lsdb.read_hats(written).compute()
    assert len(frame) == N
    assert set(table) <= set(frame.columns)
    assert sorted(frame["targetid"]) == sorted(table["targetid"].tolist())
    sidecar = json.loads((written / SIDECAR).read_text())
    assert sidecar["rows"] == N and sidecar["metadata"]["KNN_K"] == 16 and sidecar["metadata"]["OOD_THR"] is None


def test_crossmatch_with_the_input(written, table):
    """Each galaxy matches itself in the input table (as an LSDB catalogue) within 1 arcsec, exactly once."""
    import pandas as pd

    with dask.config.set(scheduler="synchronous"):
        hats = lsdb.read_hats(written)
        given = lsdb.from_dataframe(pd.DataFrame(table), ra_column="ra", dec_column="dec", catalog_name="input")
        matched = hats.crossmatch(
            given, radius_arcsec=1.0, n_neighbors=1, suffixes=("_hats", "_in"), suffix_method="all_columns"
        ).compute()
    assert len(matched) == N
    assert matched["targetid_hats"].is_unique
    assert (matched["targetid_hats"].to_numpy() == matched["targetid_in"].to_numpy()).all()
    assert (matched["_dist_arcsec"].to_numpy() < 1e-3).all()


def test_read_back_without_lsdb(written, table):
    back = read_hats_table(written)
    assert list(back) == list(table)
    order, back_order = np.argsort(table["targetid"]), np.argsort(back["targetid"])
    for name, values in table.items():
        assert back[name].dtype == values.dtype, name
        np.testing.assert_array_equal(back[name][back_order], values[order], err_msg=name)


def test_verify_names_a_damaged_file(written, tmp_path):
    assert verify_hats(written) == []
    copy = _copy(written, tmp_path)
    target = _data_file(copy)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = verify_hats(copy)
    assert len(problems) == 1 and str(target) in problems[0] and "SHA-256" in problems[0]
    with pytest.raises(DamagedDataError, match="Npix="):
        read_hats_table(copy)


def test_verify_lost_sidecar_and_added_partition(written, tmp_path):
    copy = _copy(written, tmp_path)
    extra = _data_file(copy).with_name("Npix=99999.parquet")
    shutil.copy(_data_file(copy), extra)
    problems = verify_hats(copy)
    assert any(str(extra) in p and "does not list" in p for p in problems)
    (copy / SIDECAR).unlink()
    assert "missing" in verify_hats(copy)[0]
    assert not is_galclip_hats(copy)


def test_replaces_an_earlier_catalogue_only(written, table, tmp_path):
    copy = _copy(written, tmp_path)
    fewer = {k: v[:50] for k, v in table.items()}
    write_hats(fewer, copy, "galclip_zeroshot", META)
    assert verify_hats(copy) == [] and len(read_hats_table(copy)["targetid"]) == 50
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not a galclip HATS catalogue"):
        write_hats(fewer, foreign, "galclip_zeroshot", META)
    assert (foreign / "notes.txt").read_text() == "keep"
    (tmp_path / "file.fits").write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        write_hats(fewer, tmp_path / "file.fits", "galclip_zeroshot", META)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda t: t.pop("ra"), "needs RA and Dec per galaxy: the catalogue has no 'ra' column"),
        (lambda t: t["dec"].fill(np.nan), "needs RA and Dec per galaxy: 'ra'/'dec' are NaN for all"),
        (
            lambda t: t["ra"].__setitem__(slice(7, 9), np.nan),
            "needs RA and Dec per galaxy: targetid {tid7} \\(row 7\\)",
        ),
        (lambda t: t["dec"].__setitem__(3, 95.0), "targetid {tid3} \\(row 3\\) has RA outside"),
        (lambda t: t["targetid"].__setitem__(4, t["targetid"][5]), "appears 2 times"),
        (lambda t: t.__setitem__("Z_PRED", t["Z_PRED"][:5]), "one n for all"),
    ],
)
def test_refuses_bad_positions(change, match, tmp_path):
    table = _table(20)
    match = match.format(tid7=table["targetid"][7], tid3=table["targetid"][3])
    change(table)
    with pytest.raises(InputError, match=match):
        write_hats(table, tmp_path / "out", "galclip_zeroshot", META)
    assert not (tmp_path / "out").exists()


def test_missing_packages_name_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "hats_import", None)  # import hats_import now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'galclip\[hats\]'"):
        write_hats(_table(20), tmp_path / "out", "galclip_zeroshot", META)


def test_predict_writes_hats_that_lsdb_crossmatches_with_the_input_catalogue(tiny_store, tiny_heads, tmp_path):
    """galclip's own output: 'galclip predict --format hats' over image-only galaxies, opened with lsdb.read_hats and
    cross-matched by position with the PROVABGS catalogue it was predicted for: one match per galaxy, the same
    TARGETID; galclip check verifies it."""
    import h5py
    import pandas as pd
    from click.testing import CliRunner

    from galclip.cli import main
    from galclip.config import MockConfig
    from galclip.data.mock.survey import generate_mock

    new = tmp_path / "new"
    generate_mock(MockConfig(pairs=20, seed=11, batch_size=20, n_groups=1, modality="image"), new)
    runner = CliRunner()
    index = tmp_path / "index"
    assert runner.invoke(main, ["-q", "index", str(tiny_store), str(tiny_heads), str(index), "--no-map"]).exit_code == 0
    out = tmp_path / "catalogue_hats"
    result = runner.invoke(
        main, ["-q", "predict", str(index), str(new), str(out), "--format", "hats", "--no-progress"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with h5py.File(new / "provabgs.h5") as f:
        given = pd.DataFrame({"TARGETID": f["TARGETID"][:], "RA": f["RA"][:], "DEC": f["DEC"][:]})
    with h5py.File(new / "survey.h5") as f:
        predicted = np.concatenate([g["targetid"][:] for g in f.values()])
    given = given[given["TARGETID"].isin(predicted)]  # the catalogue rows of these galaxies, not its other rows
    with dask.config.set(scheduler="synchronous"):
        hats = lsdb.read_hats(out)
        cat = lsdb.from_dataframe(given, ra_column="RA", dec_column="DEC", catalog_name="provabgs")
        matched = hats.crossmatch(
            cat, radius_arcsec=1.0, n_neighbors=1, suffixes=("_hats", "_in"), suffix_method="all_columns"
        ).compute()
    # every catalogue galaxy (the mock labels 85% of them) finds its own row, once
    assert len(matched) == len(given) > 10 and matched["TARGETID_hats"].is_unique
    assert (matched["TARGETID_hats"].to_numpy() == matched["TARGETID_in"].to_numpy()).all()
    assert {"Z_PRED", "LOGSSFR_HI", "RA", "DEC"} <= {c.removesuffix("_hats") for c in matched.columns}
    check = runner.invoke(main, ["-q", "check", str(out)])
    assert check.exit_code == 0, check.output
