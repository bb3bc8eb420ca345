"""Bad input rows at extraction: a clear error naming file and targetid, or quarantine with --bad-rows skip."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from galclip.config import ExtractConfig, HeadConfig
from galclip.errors import InputError
from galclip.store import FeatureStore


@pytest.fixture(scope="module")
def corrupted_mock(tiny_mock, tmp_path_factory):
    """The tiny mock with a NaN pixel, an all-zero spectrum and an inf flux in three rows of group 0."""
    out = tmp_path_factory.mktemp("bad")
    shutil.copy(tiny_mock / "survey.h5", out / "survey.h5")
    with h5py.File(out / "survey.h5", "r+") as f:
        g = f["0"]
        img = g["image"][2]
        img[10, 10, 1] = np.nan
        g["image"][2] = img
        g["spectrum"][5] = np.zeros((7781, 1), np.float32)
        spec = g["spectrum"][9]
        spec[100, 0] = np.inf
        g["spectrum"][9] = spec
        ids = g["targetid"][[2, 5, 9]]
    return out, ids


def test_bad_rows_fail_names_file_targetid_and_fix(corrupted_mock, tmp_path):
    from galclip.extract.run import run_extraction

    data, ids = corrupted_mock
    with pytest.raises(InputError) as err:
        run_extraction(data, tmp_path / "s.zarr", ExtractConfig(batch_size=16, rows_per_shard=16), progress=False)
    msg = str(err.value)
    assert "survey.h5:0" in msg and f"targetid {ids[0]}: image has NaN/inf pixels" in msg
    assert f"targetid {ids[1]}: spectrum is constant" in msg and "--bad-rows skip" in msg
    assert not FeatureStore.open(tmp_path / "s.zarr").complete_mask().any()  # nothing half-written is flagged


def test_bad_rows_skip_quarantines_and_readers_leave_them_out(corrupted_mock, tmp_path):
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.store.check import check_store

    data, ids = corrupted_mock
    summary = run_extraction(data, tmp_path / "s.zarr", ExtractConfig(batch_size=16, rows_per_shard=16, bad_rows="skip"),
                             progress=False)
    assert summary["quarantined"] == 3
    store = FeatureStore.open(tmp_path / "s.zarr")
    result = check_store(store)
    assert result["ok"], result["problems"]
    assert {q["targetid"] for q in result["quarantine"]} == set(ids.tolist())
    assert "spectrum has NaN/inf values" in [q["reason"] for q in result["quarantine"] if q["targetid"] == ids[2]]
    loaded = store.load()
    assert len(loaded["targetid"]) == 61 and not np.isin(ids, loaded["targetid"]).any()
    assert np.isfinite(loaded["image_features"]).all()
    train_heads(tmp_path / "s.zarr", tmp_path / "h", HeadConfig(epochs=1, batch_size=16), progress=False)
