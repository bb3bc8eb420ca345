"""The Multimodal Universe's legacysurvey and desi HDF5 files: writers, reader, checks and sniffing."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from galclip.data import mmu
from galclip.data.layout import DESI_N_BINS, desi_wavelength
from galclip.data.sources import position_targetid
from galclip.errors import InputError

N = 6


def _images(seed: int, n: int = N, size: int = 160) -> np.ndarray:
    """(n, 3, size, size) float32 g,r,z with every pixel distinct, so a wrong crop or transpose shows."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _positions(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 1])
    return rng.uniform(0, 360, n), rng.uniform(-30, 30, n)


def _expected(cube_chw: np.ndarray) -> np.ndarray:
    """AstroCLIP's storage of a (n, 3, 160, 160) cube: centre 152 pixels, (C, H, W) -> (W, H, C)."""
    return cube_chw[:, :, 4:156, 4:156].transpose(0, 3, 2, 1)


def _legacysurvey(path: Path, seed: int = 0, n: int = N, **kwargs) -> tuple[Path, np.ndarray, tuple, list[str]]:
    cube = _images(seed, n)
    ra, dec = _positions(seed, n)
    ids = [f"1054p567-{seed * 100 + i}" for i in range(n)]
    mmu.write_legacysurvey(path, cube, ra, dec, ids, **kwargs)
    return path, cube, (ra, dec), ids


def _desi(path: Path, seed: int = 0, n: int = N, **kwargs) -> dict:
    rng = np.random.default_rng([seed, 2])
    ra, dec = _positions(seed, n)
    cols = {
        "targetid": 39633345008634465 + seed * 1000 + np.arange(n, dtype=np.int64),
        "ra": ra,
        "dec": dec,
        "flux": rng.standard_normal((n, DESI_N_BINS)).astype(np.float32),
        "ivar": rng.uniform(0.5, 2.0, (n, DESI_N_BINS)).astype(np.float32),
        "redshift": rng.uniform(0.01, 0.6, n),
        "zwarn": np.where(np.arange(n) == 2, 4, 0),
    }
    mmu.write_desi(path, **cols, **kwargs)
    return cols


def test_legacysurvey_round_trip(tmp_path):
    path, cube, (ra, dec), ids = _legacysurvey(tmp_path / "ls.hdf5")
    with mmu.open_source([path]) as src:
        assert (src.kind, src.modalities, src.n_rows, src.layout) == ("legacysurvey", ("image",), N, "mmu")
        batch = src.read(0, N)
        assert batch.image.shape == (N, 152, 152, 3) and batch.image.dtype == np.float32
        np.testing.assert_array_equal(batch.image, _expected(cube))
        assert batch.spectrum is None and batch.spectrum_ivar is None
        np.testing.assert_array_equal(batch.targetid, position_targetid(ra, dec))
        np.testing.assert_array_equal(src.targetids(), position_targetid(ra, dec))
        assert (src.targetids() < 0).all()
        np.testing.assert_array_equal(batch.ra, ra)
        np.testing.assert_array_equal(src.positions()[1], dec)
        assert np.isnan(src.redshifts()).all() and np.isnan(batch.redshift).all()
        assert src.object_ids().tolist() == ids
        np.testing.assert_array_equal(src.read(2, 4).image, _expected(cube)[2:4])
        assert src.locate(3) == f"{path}:/[3]"


def test_legacysurvey_file_holds_the_builders_schema(tmp_path):
    path, *_ = _legacysurvey(tmp_path / "ls.hdf5")
    with h5py.File(path, "r") as f:
        assert f["image_array"].shape == (N, 4, 160, 160)
        assert f["image_band"][0].tolist() == [b"des-g", b"des-r", b"des-i", b"des-z"]
        np.testing.assert_allclose(f["image_scale"][()], 0.262)
        assert (f["image_array"][:, 2] == 0).all() and (f["image_ivar"][:, 2] == 0).all()  # no i band
        assert f["bit_mask"].shape == (N, 160, 160) and f["bit_mask"][()].all()
        assert f["object_id"][0] == b"1054p567-0"


def test_shuffled_band_order_still_reads_g_r_z(tmp_path):
    path, cube, *_ = _legacysurvey(tmp_path / "ls.hdf5", band_order=("z", "i", "g", "r"))
    with h5py.File(path, "r") as f:
        assert f["image_band"][0].tolist() == [b"des-z", b"des-i", b"des-g", b"des-r"]
    with mmu.open_source([path]) as src:
        np.testing.assert_array_equal(src.read(0, N).image, _expected(cube))


def test_152_pixel_images_are_padded_and_come_back_exactly(tmp_path):
    small = _images(5, size=152)
    ra, dec = _positions(5)
    path = mmu.write_legacysurvey(tmp_path / "ls.hdf5", small, ra, dec, [f"b-{i}" for i in range(N)])
    with h5py.File(path, "r") as f:
        assert f["image_array"].shape == (N, 4, 160, 160)
        assert (f["image_array"][:, :, :4] == 0).all() and (f["image_ivar"][:, 0, :4] == 0).all()
    with mmu.open_source([path]) as src:
        np.testing.assert_array_equal(src.read(0, N).image, small.transpose(0, 3, 2, 1))


def test_gzip_chunked_files_read_the_same(tmp_path):
    path, cube, *_ = _legacysurvey(tmp_path / "ls.hdf5", compression="gzip")
    with h5py.File(path, "r") as f:
        assert f["image_array"].compression == "gzip"
    with mmu.open_source([path]) as src:
        np.testing.assert_array_equal(src.read(1, N).image, _expected(cube)[1:])


def test_mask_images_zeroes_unobserved_and_flagged_pixels(tmp_path):
    path, cube, *_ = _legacysurvey(tmp_path / "ls.hdf5")
    with h5py.File(path, "r+") as f:
        f["image_ivar"][1, 0, 10, 20] = 0  # g band, no data at (H=10, W=20)
        f["bit_mask"][2, 30, 40] = False  # every band flagged at (H=30, W=40)
    with mmu.open_source([path]) as src:
        np.testing.assert_array_equal(src.read(0, N).image, _expected(cube))  # masks are not applied by default
    with mmu.open_source([path], mask_images=True) as src:
        image = src.read(0, N).image
    expected = _expected(cube).copy()
    expected[1, 20 - 4, 10 - 4, 0] = 0  # (W, H, C), cropped by 4
    expected[2, 40 - 4, 30 - 4, :] = 0
    np.testing.assert_array_equal(image, expected)


def test_desi_round_trip_with_a_masked_pixel(tmp_path):
    path = tmp_path / "desi.hdf5"
    mask = np.zeros((N, DESI_N_BINS), bool)
    mask[1, 100] = True
    cols = _desi(path, mask=mask)
    with mmu.open_source([path]) as src:
        assert (src.kind, src.modalities, src.n_rows) == ("desi", ("spectrum",), N)
        batch = src.read(0, N)
        assert batch.image is None
        assert batch.spectrum.shape == (N, DESI_N_BINS) and batch.spectrum.dtype == np.float32
        np.testing.assert_array_equal(batch.spectrum, cols["flux"])
        expected_ivar = cols["ivar"].copy()
        expected_ivar[1, 100] = 0
        np.testing.assert_array_equal(batch.spectrum_ivar, expected_ivar)
        np.testing.assert_array_equal(batch.redshift, cols["redshift"].astype(np.float32))
        np.testing.assert_array_equal(batch.targetid, cols["targetid"])
        np.testing.assert_array_equal(src.targetids(), cols["targetid"])
        np.testing.assert_array_equal(batch.ra, cols["ra"])
        np.testing.assert_array_equal(batch.dec, cols["dec"])
        np.testing.assert_array_equal(src.zwarn(), cols["zwarn"])
        assert src.object_ids().tolist() == [str(t) for t in cols["targetid"]]
    with h5py.File(path, "r") as f:
        assert f["spectrum_lambda"].shape == (N, DESI_N_BINS)
        assert f["spectrum_mask"][1, 100] and f["spectrum_mask"][()].sum() == 1  # True marks the bad pixel


def test_several_files_concatenate_in_sorted_path_order(tmp_path):
    later = _desi(tmp_path / "healpix=2.hdf5", seed=2)
    earlier = _desi(tmp_path / "healpix=1.hdf5", seed=1, n=3)
    with mmu.open_source([tmp_path / "healpix=2.hdf5", tmp_path / "healpix=1.hdf5"]) as src:
        assert src.n_rows == 3 + N
        np.testing.assert_array_equal(src.targetids(), np.concatenate([earlier["targetid"], later["targetid"]]))
        spanning = src.read(1, 5)  # two rows of each file
        np.testing.assert_array_equal(spanning.spectrum, np.concatenate([earlier["flux"][1:], later["flux"][:2]]))
        assert src.locate(4) == f"{tmp_path / 'healpix=2.hdf5'}:/[1]"
        assert [c["n_rows"] for c in src.content()] == [3, N]


def test_duplicate_targetids_are_refused_naming_the_files(tmp_path):
    _desi(tmp_path / "a.hdf5", seed=1)
    _desi(tmp_path / "b.hdf5", seed=1)  # the same targets again
    with mmu.open_source([tmp_path / "a.hdf5", tmp_path / "b.hdf5"]) as src:
        with pytest.raises(InputError, match=r"duplicate targetid.*a\.hdf5.*b\.hdf5"):
            src.targetids()


def test_duplicate_positions_are_refused_naming_the_object_ids(tmp_path):
    _legacysurvey(tmp_path / "a.hdf5", seed=1, n=2)
    _legacysurvey(tmp_path / "b.hdf5", seed=1, n=2)
    with mmu.open_source([tmp_path / "a.hdf5", tmp_path / "b.hdf5"]) as src:
        with pytest.raises(InputError, match=r"object_ids \['1054p567-10[01]'.*a\.hdf5.*b\.hdf5"):
            src.targetids()


@pytest.mark.parametrize(
    ("writer", "field"),
    [("legacysurvey", "image_band"), ("legacysurvey", "image_scale"), ("desi", "spectrum_ivar"), ("desi", "ra")],
)
def test_a_missing_field_is_named(tmp_path, writer, field):
    path = tmp_path / f"{writer}.hdf5"
    _legacysurvey(path) if writer == "legacysurvey" else _desi(path)
    with h5py.File(path, "r+") as f:
        del f[field]
    with pytest.raises(InputError, match=rf"{path.name}: missing \['{field}'\]; an MMU {writer} file holds") as err:
        mmu.open_source([path])
    assert "\n" not in str(err.value)


def test_a_wrong_pixel_scale_is_refused(tmp_path):
    path, *_ = _legacysurvey(tmp_path / "hsc_like.hdf5", pixel_scale=0.168)
    with pytest.raises(InputError, match=r"hsc_like\.hdf5: pixel scale 0\.168″.*0\.262″"):
        mmu.open_source([path])


def test_a_wrong_wavelength_grid_is_refused(tmp_path):
    path = tmp_path / "shifted.hdf5"
    _desi(path, wavelength=desi_wavelength() + 0.5)
    with pytest.raises(InputError, match=r"shifted\.hdf5: 'spectrum_lambda' \(row 0\).*DESI grid"):
        mmu.open_source([path])
    _desi(path, wavelength=desi_wavelength() + 0.004)  # within 0.01 Å (float32 rounding and more)
    mmu.open_source([path]).close()


def test_missing_band_is_refused(tmp_path):
    path, *_ = _legacysurvey(tmp_path / "ls.hdf5")
    with h5py.File(path, "r+") as f:
        bands = f["image_band"][()]
        bands[:, 1] = b"hsc-r"
        f["image_band"][...] = bands
    with pytest.raises(InputError, match=r"ls\.hdf5: no r band"):
        mmu.open_source([path])


def test_kinds_and_modalities_are_refused_when_mixed_or_lacking(tmp_path):
    ls, *_ = _legacysurvey(tmp_path / "ls.hdf5")
    _desi(tmp_path / "desi.hdf5")
    with pytest.raises(InputError, match="open each kind on its own"):
        mmu.open_source([ls, tmp_path / "desi.hdf5"])
    with pytest.raises(InputError, match="MMU legacysurvey files hold images only.*desi files"):
        mmu.open_source([ls], require=("image", "spectrum"))
    assert mmu.kind(ls) == "legacysurvey" and mmu.kind(tmp_path / "desi.hdf5") == "desi"


def _astroclip_hdf5(path: Path, m: int = 2) -> Path:
    with h5py.File(path, "w") as f:
        g = f.create_group("0")
        g.create_dataset("image", data=np.zeros((m, 152, 152, 3), np.float32))
        g.create_dataset("spectrum", data=np.zeros((m, DESI_N_BINS, 1), np.float32))
        g.create_dataset("redshift", data=np.zeros(m, np.float32))
        g.create_dataset("targetid", data=np.arange(m, dtype=np.int64))
    return path


def test_sniff(tmp_path):
    ls, *_ = _legacysurvey(tmp_path / "ls.hdf5", n=1)
    _desi(tmp_path / "desi.hdf5", n=1)
    assert mmu.sniff(ls) and mmu.sniff(tmp_path / "desi.hdf5")
    assert not mmu.sniff(_astroclip_hdf5(tmp_path / "astroclip.h5"))
    fits = tmp_path / "cutout.fits"
    fits.write_bytes(b"SIMPLE  =                    T".ljust(2880, b" "))
    assert not mmu.sniff(fits)
    (tmp_path / "notes.h5").write_text("not hdf5")
    assert not mmu.sniff(tmp_path / "notes.h5")
    assert not mmu.sniff(tmp_path / "absent.hdf5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("object_id", data=np.arange(3))
    assert not mmu.sniff(tmp_path / "other.h5")
    with pytest.raises(InputError, match="neither image_array nor spectrum_flux"):
        mmu.kind(tmp_path / "other.h5")


def test_pickled_source_reopens_its_files(tmp_path):
    path, cube, *_ = _legacysurvey(tmp_path / "ls.hdf5")
    src = mmu.open_source([path])
    src.read(0, 1)
    clone = pickle.loads(pickle.dumps(src))
    assert clone._handles == {}
    np.testing.assert_array_equal(clone.read(0, N).image, _expected(cube))
    src.close()
    clone.close()


def test_content_and_fingerprint_follow_the_data(tmp_path):
    path = tmp_path / "desi.hdf5"
    _desi(path)
    with mmu.open_source([path]) as src:
        before, print_before = src.content(), src.fingerprint()
        assert src.content() == before
    assert print_before["n_rows"] == N and print_before["layout"] == "mmu:desi"
    _desi(path, seed=0, mask=None, zerr=np.zeros(N))  # same spectra and ids, other bytes
    with mmu.open_source([path]) as src:
        assert src.content()[0]["sample_sha256"] == before[0]["sample_sha256"]
    with h5py.File(path, "r+") as f:
        f["spectrum_flux"][0, 0] += 1.0
    with mmu.open_source([path]) as src:
        after = src.content()
    assert after[0]["targetid_sha256"] == before[0]["targetid_sha256"]
    assert after[0]["sample_sha256"] != before[0]["sample_sha256"]


def test_open_survey_groups_the_two_kinds(tmp_path):
    pytest.importorskip("galclip.data.legacysurvey_fits")
    pytest.importorskip("galclip.data.desi_fits")
    from galclip.data.sources import group_by_layout

    ls, *_ = _legacysurvey(tmp_path / "ls.hdf5", n=2)
    _desi(tmp_path / "desi.hdf5", n=2)
    groups = group_by_layout([ls, tmp_path / "desi.hdf5"])
    assert groups == {"mmu:legacysurvey": [ls], "mmu:desi": [tmp_path / "desi.hdf5"]}


def test_a_file_written_as_the_mmu_builder_writes_it(tmp_path):
    """As scripts/legacysurvey/build_parent_sample.py writes: gzip, resizable, big-endian FITS floats, UTF-8
    strings, lower-case bands per row, a clean-pixel bit_mask, and the catalogue's own columns beside."""
    cube = _images(7, n=3)
    ra, dec = _positions(7, n=3)
    four = np.concatenate([cube[:, :2], np.zeros_like(cube[:, :1]), cube[:, 2:]], axis=1).astype(">f4")  # g r i z
    path = tmp_path / "healpix=1234" / "001-of-001.hdf5"
    path.parent.mkdir()
    columns = {
        "image_array": four,
        "image_ivar": np.ones_like(four),
        "bit_mask": np.ones((3, 160, 160), bool),
        "image_band": np.array([[b.encode() for b in mmu.MMU_BANDS]] * 3, dtype=h5py.string_dtype("utf-8", 5)),
        "image_scale": np.full((3, 4), 0.262, np.float32),
        "image_psf_fwhm": np.full((3, 4), 1.3, np.float32),
        "object_id": np.array(["0001m002-17", "0001m002-18", "0001m002-19"], dtype=h5py.string_dtype("utf-8", 16)),
        "ra": ra,
        "dec": dec,
        "RA": ra,
        "DEC": dec,
        "TYPE": np.array([b"SER", b"EXP", b"DEV"]),
        "FLUX_G": np.ones(3, np.float32),
        "healpix": np.full(3, 1234),
    }
    with h5py.File(path, "w") as f:
        for key, data in columns.items():
            f.create_dataset(key, data=data, compression="gzip", chunks=True, maxshape=(None, *np.shape(data)[1:]))
    assert mmu.sniff(path) and mmu.kind(path) == "legacysurvey"
    with mmu.open_source([path]) as src:
        np.testing.assert_array_equal(src.read(0, 3).image, _expected(cube))
        assert src.object_ids().tolist() == ["0001m002-17", "0001m002-18", "0001m002-19"]


def test_a_forked_source_reopens_its_handles(tmp_path):
    path, cube, *_ = _legacysurvey(tmp_path / "ls.hdf5")
    with mmu.open_source([path]) as src:
        src.read(0, 2)
        src._pid = -1  # as a DataLoader worker forked after the parent read sees it
        np.testing.assert_array_equal(src.read(0, N).image, _expected(cube))


def test_the_first_desi_builders_wavelength_ends_are_accepted(tmp_path):
    """The first desi builder wrote 'spectrum_lambda_min'/'_max' per row, not the grid itself."""
    path = tmp_path / "edr.hdf5"
    cols = _desi(path)
    with h5py.File(path, "r+") as f:
        del f["spectrum_lambda"]
        f["spectrum_lambda_min"] = np.full(N, 3600.0, np.float32)
        f["spectrum_lambda_max"] = np.full(N, 9824.0, np.float32)
    with mmu.open_source([path]) as src:
        np.testing.assert_array_equal(src.read(0, N).spectrum, cols["flux"])
    with h5py.File(path, "r+") as f:
        f["spectrum_lambda_max"][0] = 9800.0
    with pytest.raises(InputError, match=r"edr\.hdf5: 'spectrum_lambda_max' differs from the DESI grid's 9824 Å"):
        mmu.open_source([path])
