"""The Zarr feature store: layout, completeness, provenance checks."""

from __future__ import annotations

import numpy as np
import pytest

from galclip.errors import StoreError
from galclip.store import FeatureStore


def _meta(n):
    return {
        "targetid": np.arange(n) + 10,
        "split": (np.arange(n) % 10 == 0).astype(np.uint8),
        "redshift": np.linspace(0, 0.5, n),
        "label_redshift": np.full(n, np.nan),
        "label_log_mstar": np.linspace(9, 12, n),
    }


def _features(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "image_features": rng.normal(size=(n, 2048)).astype(np.float32),
        "spectrum_features": rng.normal(size=(n, 256)).astype(np.float32),
    }


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
    np.testing.assert_array_equal(
        data["image_features"], np.concatenate([parts[s]["image_features"] for s in range(3)])
    )
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
    prov = {
        "encoders": {},
        "preprocessing": {"image": {"rgb": "lupton"}},
        "data": {},
        "rows_per_shard": 256,
        "split": {"method": "splitmix64(targetid) < val_fraction", "val_fraction": 0.1},
    }
    store = FeatureStore.create(tmp_path / "old.zarr", meta, prov, rows_per_shard=256)
    split = store.split()
    np.testing.assert_array_equal(split == 1, meta["split"] == 1)  # the old validation pairs are the test split
    np.testing.assert_array_equal(split == 2, (u >= 0.1) & (u < 0.2))
    assert abs((split == 2).mean() - 0.1) < 0.02 and store.info().n_selection == int((split == 2).sum())
    assert store.provenance["preprocessing"]["image"]["orientation"] == "survey"  # what 0.2 fed the encoder
    fingerprint = store.fingerprint()
    assert FeatureStore.open(tmp_path / "old.zarr").fingerprint() == fingerprint  # defaults do not change it


def _flip_bit(file, offset: int = 10) -> None:
    data = bytearray(file.read_bytes())
    data[min(offset, len(data) - 1)] ^= 0x10
    file.write_bytes(bytes(data))


def test_derived_chunks_are_rebuilt_byte_for_byte_with_the_bad_rows_codes(tmp_path):
    """A 10-row survey (a NaN pixel in row 3, a flat spectrum in row 8) in 4-row shards (a short last one): every
    metadata and quarantine chunk damaged at once (bits flipped, files deleted) is rebuilt from the survey with the
    original bytes, the quarantine codes 1 and 3 included; a survey row repaired since is refused by the features'
    NaN rows, naming the file; the values' SHA-256 recorded at creation is that of the arrays."""
    import h5py

    from galclip.config import ExtractConfig
    from galclip.data.survey import SurveyReader
    from galclip.errors import InputError
    from galclip.extract.rows import quarantine_codes
    from galclip.extract.run import derive_meta, rebuild_derived
    from galclip.store.feature_store import DERIVED_ARRAYS, META_ARRAYS, values_sha256

    n, rng = 10, np.random.default_rng(5)
    images = rng.normal(size=(n, 152, 152, 3)).astype(np.float32)
    images[3, 5, 5, 1] = np.nan
    spectra = rng.normal(size=(n, 7781, 1)).astype(np.float32)
    spectra[8] = 1.0
    survey = tmp_path / "survey.h5"
    with h5py.File(survey, "w") as f:
        f["image"], f["spectrum"], f["targetid"] = images, spectra, np.arange(n, dtype=np.int64) + 100
        f["redshift"] = rng.uniform(0, 0.5, n).astype(np.float32)
    with SurveyReader(survey) as reader:
        prov = {
            "encoders": {},
            "preprocessing": {},
            "data": reader.fingerprint(),
            "data_content": reader.content(),
            "catalogue": None,
            "split": {"test_fraction": 0.1, "selection_fraction": 0.1},
            "rows_per_shard": 4,
        }
        meta = derive_meta(reader, None, 0.1, 0.1)
        store = FeatureStore.create(tmp_path / "s.zarr", meta, prov, rows_per_shard=4)
        for shard in range(store.n_shards):
            lo, hi = store.shard_rows(shard)
            codes = quarantine_codes(reader, lo, hi, batch_size=3)
            features = _features(hi - lo, shard)
            for block in features.values():
                block[codes != 0] = np.nan  # what extraction stores for quarantined rows
            store.write_shard(shard, features, quarantine=codes)
    assert store.quarantine().tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 3, 0]
    recorded = store.group.attrs["galclip"]["values_sha256"]
    assert all(recorded[k] == values_sha256(np.asarray(meta[k]).astype(store.group[k].dtype)) for k in META_ARRAYS)
    files = [store.chunk_file(name, shard) for name in DERIVED_ARRAYS for shard in range(store.n_shards)]
    original = {file: file.read_bytes() for file in files}
    for i, file in enumerate(files):
        file.unlink() if i % 3 == 0 else _flip_bit(file, 3 * i)
    with SurveyReader(survey) as reader:
        rebuilt = rebuild_derived(
            FeatureStore.open(tmp_path / "s.zarr", "r+"), reader, ExtractConfig(batch_size=3), None
        )
    assert len(rebuilt) == len(files)
    assert all(file.read_bytes() == data for file, data in original.items())
    assert FeatureStore.open(tmp_path / "s.zarr").quarantine().tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 3, 0]

    _flip_bit(store.chunk_file("quarantine", 0))
    with h5py.File(survey, "r+") as f:
        f["image"][3] = images[2]  # row 3 "repaired" in the file since extraction
    with SurveyReader(survey) as reader, pytest.raises(InputError, match=f"{survey}: the quarantine codes of rows 0-3"):
        rebuild_derived(FeatureStore.open(tmp_path / "s.zarr", "r+"), reader, ExtractConfig(batch_size=3), None)


def test_the_projection_mlp_is_copied_again_from_its_checkpoint_or_named_unrepairable(tmp_path):
    """The stored Stein projection MLP, a bit flipped in one chunk and a later chunk of another array deleted: check
    names both, check --repair schedules them for rebuild from the image checkpoint, and the rebuild writes the
    original bytes; with the checkpoint gone, check --repair says they cannot be repaired in place and why."""
    import torch

    from galclip.config import ExtractConfig
    from galclip.extract.image_encoder import load_stein_checkpoint, moco_resnet50
    from galclip.extract.run import rebuild_derived
    from galclip.integrity import check_path
    from galclip.provenance import sha256_file

    torch.manual_seed(0)
    ckpt = tmp_path / "stein.ckpt"
    torch.save({"state_dict": {f"encoder_q.{k}": v for k, v in moco_resnet50().state_dict().items()}}, ckpt)
    fc = {k: v.numpy() for k, v in load_stein_checkpoint(ckpt)[1].items()}
    weights = {"source": str(ckpt.resolve()), "sha256": sha256_file(ckpt)}
    prov = {
        "encoders": {"image": {"weights": weights}},
        "preprocessing": {},
        "data": {},
        "data_content": [],
        "rows_per_shard": 4,
    }
    store = FeatureStore.create(tmp_path / "s.zarr", _meta(6), prov, rows_per_shard=4, moco_fc=fc)
    files = [f for key in fc for f in store.chunk_files(f"moco_fc/{key}")]
    original = {f: f.read_bytes() for f in files}
    _flip_bit(files[0], 100)
    later = list(store.chunk_files("moco_fc/2.weight"))[-1]
    later.unlink()  # a chunk other than the first: once unchecked, it would have read back as zeros
    result = check_path(tmp_path / "s.zarr", repair=True)
    assert "array 'moco_fc/0.weight': fails its checksum" in " ".join(result["problems"])
    assert "array 'moco_fc/2.weight': chunk file missing" in " ".join(result["problems"])
    assert "scheduled 2 damaged chunk(s) for rebuild ('moco_fc/0.weight', 'moco_fc/2.weight')" in result["repair"]
    assert f"image checkpoint {ckpt.resolve()}" in result["repair"]

    class Reader:  # the survey is not read for the projection MLP
        files: list = []

    rebuilt = rebuild_derived(
        FeatureStore.open(tmp_path / "s.zarr", "r+"), Reader(), ExtractConfig(image_weights=str(ckpt)), None
    )
    assert [d["array"] for d in rebuilt] == ["moco_fc/0.weight", "moco_fc/2.weight"]
    assert all(f.read_bytes() == data for f, data in original.items())

    _flip_bit(files[0], 100)
    ckpt.rename(tmp_path / "elsewhere.ckpt")
    result = check_path(tmp_path / "s.zarr", repair=True)
    assert "Not repairable in place: 1 damaged chunk(s)" in result["repair"]
    assert f"{ckpt.resolve()}: the image checkpoint it is rebuilt from is not there" in result["repair"]
    assert "put the image checkpoint back and run the command above" in result["repair"]
