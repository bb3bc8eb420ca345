"""The same galaxies in every layout galclip reads give the same features, labels and positions; pairing on the sky
is reported; a user's mistake in any layout gets one line and leaves nothing behind."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from galclip.cli import main
from galclip.config import ExtractConfig
from galclip.data.mock.layouts import convert, layout_paths
from galclip.extract.run import run_extraction
from galclip.store import FeatureStore
from galclip.vocabulary import PROPERTIES

OTHER_LAYOUTS = ("legacysurvey-fits", "desi-fits", "mmu")


@pytest.fixture(scope="module")
def layouts(tiny_mock, tmp_path_factory) -> dict:
    """The tiny mock's 64 pairs converted into every other layout: layout -> its DATA paths."""
    out = {}
    for layout in OTHER_LAYOUTS:
        folder = tmp_path_factory.mktemp(layout)
        out[layout] = convert(tiny_mock / "survey.h5", folder, layout)
    return out


@pytest.fixture(scope="module")
def layout_stores(layouts, tiny_mock, tmp_path_factory) -> dict:
    """Each layout extracted as the tiny store was (seeded random encoders, the same catalogue)."""
    stores = {}
    for layout, data in layouts.items():
        store = tmp_path_factory.mktemp(f"{layout}-store") / "features.zarr"
        config = ExtractConfig(batch_size=32, catalogue=str(tiny_mock / "provabgs.h5"))
        stores[layout] = (store, run_extraction([str(p) for p in data], store, config, progress=False))
    return stores


@pytest.mark.parametrize("layout", OTHER_LAYOUTS)
def test_every_layout_gives_the_same_features_labels_and_positions(layout, layout_stores, tiny_store):
    store_path, summary = layout_stores[layout]
    ref, got = FeatureStore.open(tiny_store), FeatureStore.open(store_path)
    ref_rows, got_rows = np.argsort(ref.targetids()), np.argsort(got.targetids())
    np.testing.assert_array_equal(ref.targetids()[ref_rows], got.targetids()[got_rows])
    for name in ("image_features", "spectrum_features"):
        a, b = ref.read(name, 0, ref.n)[ref_rows], got.read(name, 0, got.n)[got_rows]
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert got.label_names == ref.label_names == PROPERTIES
    for name, values in ref.labels().items():
        np.testing.assert_array_equal(got.labels()[name][got_rows], values[ref_rows])
    np.testing.assert_allclose(got.positions()[0][got_rows], ref.positions()[0][ref_rows], atol=1e-7)
    np.testing.assert_array_equal(got.split()[got_rows], ref.split()[ref_rows])
    counts = summary["matching"]
    assert counts["matched"] == 64 and counts["image_only"] == counts["spectrum_only"] == counts["ambiguous"] == 0
    by = "by_targetid" if layout == "desi-fits" else "by_position"  # cutouts and MMU images carry no TARGETID
    assert counts[by] == 64
    with open(counts["unmatched_file"]) as f:
        assert f.read().strip() == "side,targetid,ra,dec,where"


def test_unmatched_galaxies_are_counted_and_listed(layouts, tmp_path):
    """Cutouts without a coadd, and coadds without a cutout, are counted and written to STORE.unmatched.csv."""
    cutouts, coadds = layouts["legacysurvey-fits"]
    some = tmp_path / "cutouts"
    some.mkdir()
    files = sorted(cutouts.iterdir())
    for f in files[:40]:
        shutil.copy(f, some / f.name)
    result = CliRunner().invoke(
        main, ["-q", "extract", str(some), str(coadds), str(tmp_path / "s.zarr"), "--batch-size", "32", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "40 matched (0 by TARGETID, 40 by position), 0 image-only, 24 spectrum-only, 0 ambiguous" in result.output
    lines = (tmp_path / "s.zarr.unmatched.csv").read_text().splitlines()
    assert lines[0] == "side,targetid,ra,dec,where" and len(lines) == 25
    assert all(line.startswith("spectrum,") for line in lines[1:])


def test_an_ambiguous_match_is_refused_by_name(layouts, tmp_path):
    """Two cutouts 0.3″ apart: the spectrum there has two candidates, so nothing is paired by guess."""
    from astropy.io import fits

    cutouts, coadds = layouts["legacysurvey-fits"]
    two = tmp_path / "cutouts"
    shutil.copytree(cutouts, two)
    first = sorted(two.iterdir())[0]
    shutil.copy(first, two / ("again-" + first.name))
    with fits.open(two / ("again-" + first.name), mode="update") as hdul:
        hdul[0].header["CRVAL2"] += 0.3 / 3600
    result = CliRunner().invoke(main, ["-q", "extract", str(two), str(coadds), str(tmp_path / "s.zarr")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--match-radius" in result.output and "0.30″" in result.output, result.output
    assert not (tmp_path / "s.zarr").exists()
    # two copies of one cutout are the same galaxy twice: refused by name as a duplicate
    shutil.copy(first, two / ("third-" + first.name))
    result = CliRunner().invoke(main, ["-q", "extract", str(two), str(coadds), str(tmp_path / "s.zarr")])
    assert result.exit_code != 0 and "duplicate" in result.output and "third-" in result.output


def test_a_wrong_cutout_and_a_bad_label_are_named(layouts, tiny_mock, tmp_path):
    from astropy.io import fits

    cutouts, coadds = layouts["legacysurvey-fits"]
    bad = tmp_path / "cutouts"
    shutil.copytree(cutouts, bad)
    victim = sorted(bad.iterdir())[3]
    with fits.open(victim, mode="update") as hdul:
        hdul[0].header["CD1_1"] *= 2
        hdul[0].header["CD2_2"] *= 2
    result = CliRunner().invoke(main, ["-q", "extract", str(bad), str(coadds), str(tmp_path / "a.zarr")])
    assert result.exit_code != 0 and victim.name in result.output and "0.262" in result.output
    assert not (tmp_path / "a.zarr").exists()
    for option, says in (("--label=dn=NO_SUCH", "has no column 'NO_SUCH'"), ("--label=oops", "expected NAME=COLUMN")):
        result = CliRunner().invoke(
            main,
            ["-q", "extract", str(tiny_mock / "survey.h5"), str(tmp_path / "b.zarr"), option, "--catalogue",
             str(tiny_mock / "provabgs.h5")],
        )  # fmt: skip
        assert result.exit_code != 0 and says in result.output, result.output
        assert not (tmp_path / "b.zarr").exists()


def test_an_mmu_file_missing_a_field_is_named(layouts, tmp_path):
    legacysurvey, desi = layouts["mmu"]
    broken = tmp_path / "desi.h5"
    shutil.copy(desi, broken)
    with h5py.File(broken, "r+") as f:
        del f["spectrum_lambda"]
    result = CliRunner().invoke(main, ["-q", "extract", str(legacysurvey), str(broken), str(tmp_path / "s.zarr")])
    assert result.exit_code != 0 and "spectrum_lambda" in result.output and str(broken) in result.output


def test_a_label_column_is_stored_and_old_stores_keep_two_labels(tiny_mock, tiny_store, tmp_path):
    """--label NAME=COLUMN adds a numeric catalogue column; a store written before the properties reads its two."""
    store = tmp_path / "s.zarr"
    cfg = ExtractConfig(batch_size=32, catalogue=str(tiny_mock / "provabgs.h5"), labels=("mag_r=MAG_R",))
    run_extraction(tiny_mock, store, cfg, progress=False)
    s = FeatureStore.open(store)
    assert s.label_names == (*PROPERTIES, "mag_r")
    with h5py.File(tiny_mock / "provabgs.h5") as f:
        by_id = dict(zip(f["TARGETID"][:].tolist(), f["MAG_R"][:].tolist()))
    got = s.labels()["mag_r"]
    has = np.isfinite(got)
    assert has.sum() > 30
    np.testing.assert_allclose(got[has], [by_id[t] for t in s.targetids()[has]], rtol=1e-6)
    old = FeatureStore.open(tiny_store)
    assert set(old.label_names) >= {"redshift", "log_mstar"}


def test_search_a_single_cutout_needs_no_targetid(layouts, tiny_mock, tiny_store, tiny_heads, tmp_path):
    """A file that holds one galaxy, only its image: search --data finds its neighbours without --targetid; cutouts
    (which name no TARGETID) are predicted and joined to their truth on the sky."""
    index = tmp_path / "index"
    runner = CliRunner()
    result = runner.invoke(main, ["-q", "index", str(tiny_store), str(tiny_heads), str(index), "--no-map"])
    assert result.exit_code == 0, result.output
    cutout = sorted(layout_paths(layouts["legacysurvey-fits"][0].parent, "legacysurvey-fits")[0].iterdir())[0]
    result = runner.invoke(main, ["-q", "search", str(index), "--data", str(cutout), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["-q", "search", str(index), "--data", str(cutout), "--query", "spectrum"])
    assert result.exit_code != 0 and "holds no spectrum" in result.output
    some = tmp_path / "cutouts"
    some.mkdir()
    for f in sorted(cutout.parent.iterdir())[:12]:
        shutil.copy(f, some / f.name)
    out = tmp_path / "cat.fits"
    truth = str(tiny_mock / "provabgs.h5")
    result = runner.invoke(main, ["-q", "predict", str(index), str(some), str(out), "--truth", truth, "--no-progress"])
    assert result.exit_code == 0, result.output
    import json

    store = FeatureStore.open(tiny_store)
    labelled = dict(zip(store.targetids().tolist(), np.isfinite(store.labels()["redshift"]).tolist()))
    expected = sum(labelled[int(f.stem.split("-")[1])] for f in some.iterdir())  # cutout-<TARGETID>.fits
    metrics = json.loads((tmp_path / "cat_report" / "metrics.json").read_text())
    assert metrics["truth"]["n_with_truth"] == expected > 5
    # --format hats partitions on the sky: files without positions are refused before anything runs
    bare = tmp_path / "bare.h5"
    with h5py.File(tiny_mock / "survey.h5") as src, h5py.File(bare, "w") as dst:
        dst["image"], dst["targetid"] = src["0"]["image"][:4], src["0"]["targetid"][:4]
    result = runner.invoke(main, ["-q", "predict", str(index), str(bare), str(tmp_path / "h"), "--format", "hats"])
    assert result.exit_code != 0 and "needs RA and Dec" in result.output, result.output
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.features.zarr").exists()
