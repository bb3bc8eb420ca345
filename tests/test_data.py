"""Survey and catalogue readers, the split: layouts, cuts, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from galclip.data.catalogue import apply_cuts, join_labels, read_catalogue
from galclip.data.survey import SurveyReader
from galclip.errors import InputError
from galclip.split import assign_split, targetid_uniform


def test_split_depends_only_on_targetid():
    rng = np.random.default_rng(0)
    ids = 39627000000000000 + rng.choice(10**9, 100_000, replace=False)
    split = assign_split(ids, 0.1)
    for code in (1, 2):  # test, selection
        assert abs((split == code).mean() - 0.1) < 0.005
    # the test split is exactly the validation split of galclip 0.1/0.2 (hash < 0.1)
    np.testing.assert_array_equal(split == 1, targetid_uniform(ids) < 0.1)
    perm = rng.permutation(len(ids))
    np.testing.assert_array_equal(assign_split(ids[perm], 0.1), split[perm])  # order-free
    grown = np.concatenate([ids, 39628000000000000 + np.arange(5000)])
    np.testing.assert_array_equal(assign_split(grown, 0.1)[: len(ids)], split)  # stable as data grow
    u = targetid_uniform(ids)
    assert u.min() >= 0 and u.max() < 1


def _write_survey(path, n=4, image_shape=(152, 152, 3), spec_len=7781, ids=None):
    with h5py.File(path, "w") as f:
        g = f.create_group("0")
        g["image"] = np.zeros((n, *image_shape), np.float32)
        g["spectrum"] = np.zeros((n, spec_len, 1), np.float32)
        g["redshift"] = np.zeros(n, np.float32)
        g["targetid"] = np.arange(n) if ids is None else ids


def test_reader_names_band_order_mistake(tmp_path):
    _write_survey(tmp_path / "s.h5", image_shape=(3, 152, 152))
    with pytest.raises(InputError, match=r"s.h5:0.*bands first"):
        SurveyReader(tmp_path / "s.h5")


def test_reader_names_wrong_spectrum_grid(tmp_path):
    _write_survey(tmp_path / "s.h5", spec_len=3921)
    with pytest.raises(InputError, match="7781"):
        SurveyReader(tmp_path / "s.h5")


def test_reader_names_duplicate_targetids(tmp_path):
    _write_survey(tmp_path / "s.h5", ids=np.array([5, 6, 5, 7]))
    with pytest.raises(InputError, match=r"duplicate targetid.*\[5\]"):
        SurveyReader(tmp_path / "s.h5").targetids()


def test_reader_rejects_corrupt_file(tmp_path):
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(InputError, match="bad.h5"):
        SurveyReader(tmp_path / "bad.h5")


def _catalogue_columns(n=6):
    return {
        "TARGETID": np.arange(n, dtype=np.int64) + 100,
        "Z_HP": np.linspace(0.1, 0.3, n),
        "PROVABGS_LOGMSTAR_BF": np.array([10.0, -999.0, 11.0, 10.5, 9.8, 10.1])[:n],
        "MAG_G": np.array([19.0, 19.0, -1.0, 18.0, 18.5, 18.2])[:n],
        "MAG_R": np.full(n, 18.0),
        "MAG_Z": np.full(n, 17.5),
    }


def test_catalogue_cuts_and_join_columns_layout(tmp_path):
    cols = _catalogue_columns()
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in cols.items():
            f[k] = v
    np.testing.assert_array_equal(apply_cuts(read_catalogue(tmp_path / "c.h5")), [1, 0, 0, 1, 1, 1])
    labels = join_labels(np.array([103, 101, 999, 100]), tmp_path / "c.h5")
    np.testing.assert_allclose(labels.log_mstar, [10.5, np.nan, np.nan, 10.0])
    assert (labels.n_catalogue, labels.n_after_cuts, labels.n_matched) == (6, 4, 2)


def test_catalogue_compound_table_layout(tmp_path):
    cols = _catalogue_columns()
    table = np.zeros(6, dtype=[(k, "f8" if k != "TARGETID" else "i8") for k in cols])
    for k, v in cols.items():
        table[k] = v
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["__astropy_table__"] = table
    np.testing.assert_array_equal(read_catalogue(tmp_path / "c.h5")["TARGETID"], cols["TARGETID"])


def test_catalogue_missing_column_is_named(tmp_path):
    cols = _catalogue_columns()
    del cols["MAG_Z"]
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in cols.items():
            f[k] = v
    with pytest.raises(InputError, match="MAG_Z"):
        read_catalogue(tmp_path / "c.h5")


def test_catalogue_empty_after_cuts(tmp_path):
    cols = _catalogue_columns()
    cols["PROVABGS_LOGMSTAR_BF"][:] = -1
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in cols.items():
            f[k] = v
    with pytest.raises(InputError, match="no catalogue row passes the cuts"):
        join_labels(np.arange(3), tmp_path / "c.h5")


def test_reader_single_modality_files_and_pairs_that_disagree(tmp_path):
    """Image-only and spectrum-only groups read with require=(); a pair file whose arrays disagree, a file with
    neither modality, and groups that share no modality are refused by name."""
    with h5py.File(tmp_path / "spec.h5", "w") as f:
        f["spectrum"] = np.ones((3, 7781, 1), np.float32)
        f["targetid"] = np.arange(3)
    with SurveyReader(tmp_path / "spec.h5", require=()) as reader:
        batch = reader.read(0, 3)
        assert reader.modalities == ("spectrum",) and batch.image is None and batch.spectrum.shape == (3, 7781)
        assert np.isnan(reader.redshifts()).all()
    _write_survey(tmp_path / "pairs.h5")
    with h5py.File(tmp_path / "pairs.h5", "a") as f:
        del f["0/spectrum"]
        f["0/spectrum"] = np.zeros((5, 7781, 1), np.float32)
    with pytest.raises(InputError, match=r"pairs.h5:0: dataset 'spectrum' has 5 rows but 'targetid' has 4"):
        SurveyReader(tmp_path / "pairs.h5", require=())
    with h5py.File(tmp_path / "none.h5", "w") as f:
        f["targetid"] = np.arange(3)
    with pytest.raises(InputError, match="none.h5:/: holds neither 'image' nor 'spectrum'"):
        SurveyReader(tmp_path / "none.h5", require=())
    with h5py.File(tmp_path / "mixed.h5", "w") as f:
        f["0/image"] = np.zeros((2, 152, 152, 3), np.float32)
        f["0/targetid"] = np.arange(2)
        f["1/spectrum"] = np.ones((2, 7781, 1), np.float32)
        f["1/targetid"] = np.arange(2, 4)
    with pytest.raises(InputError, match="no modality is held by every group"):
        SurveyReader(tmp_path / "mixed.h5", require=())


def test_properties_mmu_spellings_and_label_columns(tmp_path):
    """Every PROVABGS property under the Multimodal Universe's names, log sSFR = log SFR - log M* (not log Z_MW),
    --label NAME=COLUMN for a numeric column; a text column or a missing one is refused naming it."""
    cols = _catalogue_columns()
    cols["LOG_MSTAR"] = cols.pop("PROVABGS_LOGMSTAR_BF")
    cols["Z_MW"] = np.full(6, 0.02)
    cols["TAGE_MW"] = np.linspace(1, 6, 6)
    cols["AVG_SFR"] = np.full(6, 10.0)
    cols["NAME"] = np.array([b"a", b"b", b"c", b"d", b"e", b"f"])
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in cols.items():
            f[k] = v
    labels = join_labels(np.array([100, 103]), tmp_path / "c.h5", {"mag_r": "MAG_R"})
    assert list(labels.values) == ["redshift", "log_mstar", "log_metallicity", "age", "log_ssfr", "mag_r"]
    np.testing.assert_allclose(labels.values["log_ssfr"], 1.0 - labels.log_mstar, rtol=1e-6)
    np.testing.assert_allclose(labels.values["log_metallicity"], np.log10(0.02), rtol=1e-6)
    with pytest.raises(InputError, match="'NAME'.*not numeric"):
        join_labels(np.array([100]), tmp_path / "c.h5", {"name": "NAME"})
    with pytest.raises(InputError, match="has no column 'NOPE'"):
        join_labels(np.array([100]), tmp_path / "c.h5", {"nope": "NOPE"})


def test_a_store_written_before_the_properties_opens_with_its_two_labels(tmp_path):
    """A store whose metadata is the five arrays of earlier versions (no meta_arrays record, no RA/Dec)."""
    from galclip.store import FeatureStore
    from galclip.store.feature_store import META_ARRAYS

    meta = {
        "targetid": np.arange(1, 9, dtype=np.int64),
        "split": np.zeros(8, np.uint8),
        "redshift": np.full(8, 0.1, np.float32),
        "label_redshift": np.full(8, 0.1, np.float32),
        "label_log_mstar": np.full(8, 10.0, np.float32),
    }
    FeatureStore.create(tmp_path / "old.zarr", meta, {}, rows_per_shard=4)
    store = FeatureStore.open(tmp_path / "old.zarr")
    assert "meta_arrays" not in store.group.attrs["galclip"] and store.meta_arrays == META_ARRAYS
    assert store.label_names == ("redshift", "log_mstar") and store.positions() is None
    assert set(store.labels()) == {"redshift", "log_mstar"}


def test_galaxies_without_a_targetid_join_the_catalogue_on_the_sky(tmp_path):
    """A cutout's position id finds its catalogue row within 1″; two rows within the radius are refused by name."""
    from galclip.data.sources import position_targetid

    cols = _catalogue_columns()
    cols["RA"] = np.array([150.0, 150.1, 150.2, 150.3, 150.4, 150.4 + 0.5 / 3600])
    cols["DEC"] = np.full(6, 2.0)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        for k, v in cols.items():
            f[k] = v
    ra, dec = np.array([150.3 + 0.3 / 3600, 150.0, 151.0]), np.full(3, 2.0)
    ids = position_targetid(ra, dec)
    labels = join_labels(ids, tmp_path / "c.h5", positions=(ra, dec))
    np.testing.assert_allclose(labels.log_mstar, [10.5, 10.0, np.nan])  # rows 3 and 0; nothing near 151°
    ra[0] = 150.4 + 0.2 / 3600  # now two catalogue rows (4 and 5) lie within 1″
    with pytest.raises(InputError, match="two or more counterparts within --match-radius 1″.*smaller --match-radius"):
        join_labels(position_targetid(ra, dec), tmp_path / "c.h5", positions=(ra, dec))
