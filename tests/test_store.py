"""The Zarr feature store: layout, completeness, provenance checks."""

from __future__ import annotations

import numpy as np
import pytest

from galclip.errors import StoreError
from galclip.store import FeatureStore


def _meta(n):
    return {"targetid": np.arange(n) + 10, "split": (np.arange(n) % 10 == 0).astype(np.uint8),
            "redshift": np.linspace(0, 0.5, n), "label_redshift": np.full(n, np.nan),
            "label_log_mstar": np.linspace(9, 12, n)}


def _features(n, seed):
    rng = np.random.default_rng(seed)
    return {"image_features": rng.normal(size=(n, 2048)).astype(np.float32),
            "spectrum_features": rng.normal(size=(n, 256)).astype(np.float32)}


def test_store_round_trip_and_completeness(tmp_path):
    prov = {"encoders": {"image": 1}, "preprocessing": {"rgb": "lupton"}, "data": {"n": 10}, "rows_per_shard": 4}
    store = FeatureStore.create(tmp_path / "s.zarr", _meta(10), prov, rows_per_shard=4)
    assert store.n_shards == 3 and not store.complete_mask().any()
    parts = {s: _features(hi - lo, s) for s, (lo, hi) in ((s, store.shard_rows(s)) for s in range(3))}
    store.write_shard(2, parts[2])  # out of order, a short last shard
    with pytest.raises(StoreError, match="only 1 of 3 shards"):
        FeatureStore.open(tmp_path / "s.zarr").load()
    partial = FeatureStore.open(tmp_path / "s.zarr").load(allow_partial=True)
    np.testing.assert_array_equal(partial["targetid"], [18, 19])
    store.write_shard(0, parts[0])
    store.write_shard(1, parts[1])
    data = FeatureStore.open(tmp_path / "s.zarr").load()
    np.testing.assert_array_equal(data["image_features"], np.concatenate([parts[s]["image_features"] for s in range(3)]))
    np.testing.assert_array_equal(data["label_log_mstar"], _meta(10)["label_log_mstar"].astype(np.float32))
    info = FeatureStore.open(tmp_path / "s.zarr").info()
    from galclip.split import assign_split

    codes = assign_split(np.arange(10) + 10)  # the splits come from the targetids, whatever the array holds
    assert info.complete and info.n_labelled == 0
    assert (info.n_train, info.n_selection, info.n_test) == tuple(int((codes == c).sum()) for c in (0, 2, 1))
    assert info.arrays["image_features"] == ((10, 2048), "float32")


def test_store_refuses_overwrite_and_other_provenance(tmp_path):
    prov = {"encoders": {"image": "a"}, "preprocessing": {"rgb": "lupton"}, "data": {"n": 5}, "rows_per_shard": 4}
    store = FeatureStore.create(tmp_path / "s.zarr", _meta(5), prov, rows_per_shard=4)
    with pytest.raises(StoreError, match="already exists"):
        FeatureStore.create(tmp_path / "s.zarr", _meta(5), prov)
    store.check_compatible(dict(prov, code_version="other"))  # code version alone is not a difference
    with pytest.raises(StoreError, match=r"encoders\.image: store has \"a\", this run has \"b\""):
        store.check_compatible(dict(prov, encoders={"image": "b"}))


def test_fingerprint_tracks_content(tmp_path):
    prov = {"encoders": {}, "preprocessing": {}, "data": {}, "rows_per_shard": 4}
    a = FeatureStore.create(tmp_path / "a.zarr", _meta(5), prov, 4).fingerprint()
    b = FeatureStore.create(tmp_path / "b.zarr", _meta(5), prov, 4).fingerprint()
    meta = _meta(5)
    meta["targetid"] = meta["targetid"] + 1
    c = FeatureStore.create(tmp_path / "c.zarr", meta, prov, 4).fingerprint()
    assert a == b != c


def test_open_missing_store_explains(tmp_path):
    with pytest.raises(StoreError, match="galclip extract"):
        FeatureStore.open(tmp_path / "nope.zarr")


def test_check_reports_incomplete_shards_nan_rows_and_duplicates(tmp_path):
    from click.testing import CliRunner

    from galclip.cli import main
    from galclip.store.check import check_store

    prov = {"encoders": {}, "preprocessing": {}, "data": {}, "rows_per_shard": 4}
    meta = _meta(10)
    meta["targetid"][9] = meta["targetid"][0]  # a duplicate
    store = FeatureStore.create(tmp_path / "s.zarr", meta, prov, rows_per_shard=4)
    feats = _features(4, 0)
    feats["spectrum_features"][2, 5] = np.nan
    store.write_shard(0, feats)
    store.write_shard(1, _features(4, 1))
    result = check_store(FeatureStore.open(tmp_path / "s.zarr"))
    text = "\n".join(result["problems"])
    assert not result["ok"]
    assert "1 of 3 shards are incomplete" in text and "duplicate targetid" in text and "targetid [12]" in text
    r = CliRunner().invoke(main, ["check", str(tmp_path / "s.zarr")])
    assert r.exit_code == 1 and "PROBLEM" in r.output


def test_a_store_written_before_the_selection_split_gets_it_from_its_targetids(tmp_path):
    """A galclip 0.2 store (codes 0 train / 1 validation, provenance val_fraction) needs no re-extraction: its
    validation pairs are the test split, and a selection split is carved out of its train pairs."""
    from galclip.split import targetid_uniform

    n = 4000
    meta = _meta(n)
    meta["targetid"] = 39627000000000000 + np.random.default_rng(1).choice(10**9, n, replace=False)
    u = targetid_uniform(meta["targetid"])
    meta["split"] = (u < 0.1).astype(np.uint8)  # how galclip 0.2 wrote it
    prov = {"encoders": {}, "preprocessing": {"image": {"rgb": "lupton"}}, "data": {}, "rows_per_shard": 256,
            "split": {"method": "splitmix64(targetid) < val_fraction", "val_fraction": 0.1}}
    store = FeatureStore.create(tmp_path / "old.zarr", meta, prov, rows_per_shard=256)
    split = store.split()
    np.testing.assert_array_equal(split == 1, meta["split"] == 1)  # the old validation pairs are the test split
    np.testing.assert_array_equal(split == 2, (u >= 0.1) & (u < 0.2))
    assert abs((split == 2).mean() - 0.1) < 0.02 and store.info().n_selection == int((split == 2).sum())
    assert store.provenance["preprocessing"]["image"]["orientation"] == "survey"  # what 0.2 fed the encoder
    fingerprint = store.fingerprint()
    assert FeatureStore.open(tmp_path / "old.zarr").fingerprint() == fingerprint  # defaults do not change it
