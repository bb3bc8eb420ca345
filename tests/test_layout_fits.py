"""The FITS layouts: Legacy Survey viewer cutouts and DESI coadds (written here, and real ones from fastspecfit)."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from galclip.data import desi_fits, legacysurvey_fits
from galclip.data.desi_fits import write_coadd, write_redrock
from galclip.data.layout import DESI_N_BINS, desi_wavelength
from galclip.data.legacysurvey_fits import write_cutout
from galclip.data.sources import position_targetid
from galclip.errors import InputError

RA, DEC = 150.123456789, 2.2109876543


def _cube(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.normal(size=(3, size, size)).astype(np.float32)


def _named(path: Path, pattern: str) -> str:
    """A match= pattern: the file's name, then ``pattern``."""
    return re.escape(str(path)) + ".*" + pattern


def _edit_header(path: Path, **cards) -> None:
    with fits.open(path, mode="update") as hdul:
        for key, value in cards.items():
            hdul[0].header[key] = value


# ---------------------------------------------------------------- Legacy Survey cutouts


def test_cutout_round_trip_gives_the_cube_transposed_and_the_wcs_centre(tmp_path):
    rng = np.random.default_rng(0)
    cube = _cube(rng, 152)
    write_cutout(tmp_path / "a.fits", cube, RA, DEC)
    write_cutout(tmp_path / "b.fits", cube[::-1].copy(), RA + 0.01, DEC, targetid=39633345008634465)
    with legacysurvey_fits.open_source([tmp_path / "a.fits", tmp_path / "b.fits"]) as src:
        assert (src.layout, src.n_rows, src.modalities) == ("legacysurvey-fits", 2, ("image",))
        batch = src.read(0, 2)
        assert batch.image.shape == (2, 152, 152, 3) and batch.image.dtype == np.float32
        assert np.array_equal(batch.image[0], cube.transpose(2, 1, 0))
        assert np.array_equal(batch.image[1], cube[::-1].transpose(2, 1, 0))
        assert batch.spectrum is None and batch.spectrum_ivar is None and np.isnan(batch.redshift).all()
        ra, dec = src.positions()
        np.testing.assert_allclose(ra, [RA, RA + 0.01], atol=1e-6, rtol=0)
        np.testing.assert_allclose(dec, [DEC, DEC], atol=1e-6, rtol=0)
        np.testing.assert_array_equal(batch.ra, ra)
        ids = src.targetids()
        assert ids[0] == position_targetid(np.array([RA]), np.array([DEC]))[0] and ids[1] == 39633345008634465
        assert np.isnan(src.redshifts()).all() and src.redshifts().dtype == np.float32
        assert src.locate(1) == f"{tmp_path / 'b.fits'}:PRIMARY"
        assert set(src.fingerprint()) == {"layout", "files", "bytes", "n_rows"}
        content = src.content()
        assert [c["n_rows"] for c in content] == [1, 1] and content[0]["sample_sha256"] != content[1]["sample_sha256"]
        assert content == legacysurvey_fits.open_source([tmp_path / "a.fits", tmp_path / "b.fits"]).content()
        again = pickle.loads(pickle.dumps(src))
        assert np.array_equal(again.read(1, 2).image, batch.image[1:])


def test_cutout_centre_follows_the_wcs_when_crpix_is_off_centre(tmp_path):
    from astropy.wcs import WCS

    path = tmp_path / "off.fits"
    write_cutout(path, _cube(np.random.default_rng(1), 120), RA, 60.0)
    _edit_header(path, CRPIX1=63.0, CRPIX2=58.25)
    expected = WCS(fits.getheader(path), naxis=2).all_pix2world([[59.5, 59.5]], 0)[0]
    ra, dec = legacysurvey_fits.open_source([path]).positions()
    np.testing.assert_allclose([ra[0], dec[0]], expected, atol=1e-9, rtol=0)
    assert abs(ra[0] - RA) > 1e-4  # the centre pixel, not CRVAL


def test_large_cutouts_are_centre_cropped_and_small_ones_padded(tmp_path):
    rng = np.random.default_rng(2)
    big, small, odd = _cube(rng, 200), _cube(rng, 100), _cube(rng, 97)
    for name, cube in (("big", big), ("small", small), ("odd", odd)):
        write_cutout(tmp_path / f"{name}.fits", cube, RA, DEC + len(name))
    src = legacysurvey_fits.open_source([tmp_path / f"{n}.fits" for n in ("big", "small", "odd")])
    img = src.read(0, 3).image
    assert np.array_equal(img[0], big[:, 24:176, 24:176].transpose(2, 1, 0))  # top = 200//2 - 76
    pad = 76 - 50
    assert np.array_equal(img[1][pad : pad + 100, pad : pad + 100], small.transpose(2, 1, 0))
    assert np.array_equal(img[1][28:124, 28:124], small[:, 2:98, 2:98].transpose(2, 1, 0))  # the central 96 px
    assert not img[1][:pad].any() and not img[1][pad + 100 :].any() and not img[1][:, :pad].any()
    assert np.array_equal(img[2][76, 76], odd[:, 48, 48])  # pixel H//2 lands on 76


def test_cutout_bands_are_reordered_to_g_r_z(tmp_path):
    cube = _cube(np.random.default_rng(3), 152)
    path = tmp_path / "zrg.fits"
    write_cutout(path, cube[::-1].copy(), RA, DEC)  # planes z, r, g
    _edit_header(path, BANDS="zrg", BAND0="z", BAND1="r", BAND2="g")
    assert np.array_equal(legacysurvey_fits.open_source([path]).read(0, 1).image[0], cube.transpose(2, 1, 0))
    griz = tmp_path / "griz.fits"  # a DR10 cutout with bands=griz: its g, r, z planes
    header = fits.getheader(path)
    header.update(BANDS="griz", BAND0="g", BAND1="r", BAND2="i", BAND3="z")
    fits.PrimaryHDU(np.stack([cube[0], cube[1], cube[2] + 7, cube[2]]), header=header).writeto(griz)
    assert np.array_equal(legacysurvey_fits.open_source([griz]).read(0, 1).image[0], cube.transpose(2, 1, 0))


def test_gzipped_cutouts_read_like_plain_ones(tmp_path):
    cube = _cube(np.random.default_rng(4), 152)
    write_cutout(tmp_path / "a.fits", cube, RA, DEC)
    with open(tmp_path / "a.fits", "rb") as f, gzip.open(tmp_path / "a.fits.gz", "wb") as g:
        shutil.copyfileobj(f, g)
    assert legacysurvey_fits.sniff(tmp_path / "a.fits.gz")
    assert np.array_equal(legacysurvey_fits.open_source([tmp_path / "a.fits.gz"]).read(0, 1).image[0], cube.T)


@pytest.mark.parametrize(
    ("edit", "size", "pattern"),
    [
        ({"CD1_1": -0.524 / 3600, "CD2_2": 0.524 / 3600}, 152, r"pixel scale 0\.524″/px, expected 0\.262″.*pixscale"),
        ({"BANDS": "gri", "BAND2": "i"}, 152, r"bands 'gri', lacking z.*bands=grz"),
        ({}, 90, r"90 × 90 px, expected at least 96.*size=152"),
    ],
    ids=["scale", "band", "small"],
)
def test_cutouts_galclip_cannot_use_are_refused_naming_the_file(tmp_path, edit, size, pattern):
    path = tmp_path / "bad.fits"
    write_cutout(path, _cube(np.random.default_rng(5), size), RA, DEC)
    _edit_header(path, **edit)
    with pytest.raises(InputError, match=_named(path, pattern)):
        legacysurvey_fits.open_source([path])


def test_cutouts_of_one_position_are_refused_naming_both(tmp_path):
    cube = _cube(np.random.default_rng(6), 152)
    write_cutout(tmp_path / "a.fits", cube, RA, DEC)
    write_cutout(tmp_path / "b.fits", cube, RA, DEC)
    src = legacysurvey_fits.open_source([tmp_path / "a.fits", tmp_path / "b.fits"])
    with pytest.raises(InputError, match=_named(tmp_path / "a.fits", re.escape(str(tmp_path / "b.fits")))):
        src.targetids()
    with pytest.raises(InputError, match="images only"):
        legacysurvey_fits.open_source([tmp_path / "a.fits"], require=("image", "spectrum"))


# ---------------------------------------------------------------- DESI coadds


def _spectra(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    flux = rng.normal(5.0, 2.0, size=(n, DESI_N_BINS)).astype(np.float32)
    ivar = rng.uniform(0.2, 3.0, size=(n, DESI_N_BINS)).astype(np.float32)
    ivar[:, rng.integers(0, DESI_N_BINS, 40)] = 0.0
    return flux, ivar


def _coadd(path: Path, rng: np.random.Generator, n: int = 4, tid0: int = 1000, redshift: bool = True):
    flux, ivar = _spectra(rng, n)
    tid = np.arange(tid0, tid0 + n, dtype=np.int64)
    ra, dec = rng.uniform(0, 360, n), rng.uniform(-20, 60, n)
    z = rng.uniform(0.01, 0.6, n) if redshift else None
    write_coadd(path, tid, ra, dec, flux, ivar, z, np.arange(n) if redshift else None)
    return tid, ra, dec, flux, ivar, z


def _merge_by_loop(path: Path, row: int) -> tuple[np.ndarray, np.ndarray]:
    """The merged flux and ivar of one coadd row, bin by bin from the arms as astropy reads them (float64)."""
    wave = desi_wavelength()
    num, wsum = np.zeros(DESI_N_BINS), np.zeros(DESI_N_BINS)
    with fits.open(path) as hdul:
        for arm in "BRZ":
            lam = hdul[f"{arm}_WAVELENGTH"].data
            f = hdul[f"{arm}_FLUX"].data[row].astype(np.float64)
            w = hdul[f"{arm}_IVAR"].data[row].astype(np.float64) * (hdul[f"{arm}_MASK"].data[row] == 0)
            hi = np.clip(np.searchsorted(wave, lam), 1, DESI_N_BINS - 1)
            j = np.where(np.abs(wave[hi] - lam) < np.abs(wave[hi - 1] - lam), hi, hi - 1)  # the nearest grid bin
            for k in range(len(lam)):
                num[j[k]] += w[k] * f[k]
                wsum[j[k]] += w[k]
    return np.divide(num, wsum, out=np.zeros_like(num), where=wsum > 0), wsum


def test_coadd_round_trip_gives_the_written_spectra_and_redrock_redshifts(tmp_path):
    rng = np.random.default_rng(10)
    path = tmp_path / "coadd-t-1.fits"
    tid, ra, dec, flux, ivar, z = _coadd(path, rng)
    assert (tmp_path / "redrock-t-1.fits").exists()
    with fits.open(path) as hdul:
        assert [hdul[f"{a}_WAVELENGTH"].data.size for a in "BRZ"] == [2751, 2326, 2881]
        assert hdul["R_WAVELENGTH"].data[0] == 5760.0 and hdul["Z_WAVELENGTH"].data[-1] == 9824.0
    with desi_fits.open_source([path], require=("spectrum",)) as src:
        assert (src.layout, src.n_rows, src.modalities) == ("desi-fits", 4, ("spectrum",))
        b = src.read(0, 4)
        assert b.image is None and b.spectrum.shape == (4, DESI_N_BINS) and b.spectrum.dtype == np.float32
        good = ivar > 0
        np.testing.assert_allclose(b.spectrum[good], flux[good], rtol=1e-6)
        np.testing.assert_allclose(b.spectrum_ivar, ivar, rtol=1e-6)
        assert not b.spectrum[~good].any() and not b.spectrum_ivar[~good].any()
        np.testing.assert_array_equal(b.targetid, tid)
        np.testing.assert_allclose(b.redshift, z.astype(np.float32))
        np.testing.assert_array_equal(src.zwarns(), np.arange(4))
        np.testing.assert_array_equal(src.positions()[0], ra)
        np.testing.assert_array_equal(b.dec, dec)
        assert src.locate(2) == f"{path}:FIBERMAP[2]"
        assert len(src.content()) == 1 and set(src.fingerprint()) == {"layout", "files", "bytes", "n_rows"}
        again = pickle.loads(pickle.dumps(src))
        np.testing.assert_array_equal(again.read(1, 3).spectrum, b.spectrum[1:3])


def test_arms_that_disagree_are_merged_with_inverse_variance_weights_and_masks(tmp_path):
    rng = np.random.default_rng(11)
    path = tmp_path / "coadd-t-2.fits"
    _coadd(path, rng, n=2)
    with fits.open(path, mode="update") as hdul:  # the arms disagree everywhere, overlaps included
        for arm in "BRZ":
            shape = hdul[f"{arm}_FLUX"].data.shape
            hdul[f"{arm}_FLUX"].data[:] = rng.normal(3.0, 1.0, shape)
            hdul[f"{arm}_IVAR"].data[:] = rng.uniform(0.1, 4.0, shape)
        hdul["B_MASK"].data[0, [10, 2705, 2740]] = 1  # outside and inside the B/R overlap
        hdul["R_IVAR"].data[1, 5] = np.nan
    with desi_fits.open_source([path]) as src:
        b = src.read(0, 2)
    for row in range(2):
        flux, ivar = _merge_by_loop(path, row)
        if row == 1:  # a NaN ivar counts as no data
            ivar[2700 + 5] = fits.getdata(path, "B_IVAR")[1, 2705]
            flux[2705] = fits.getdata(path, "B_FLUX")[1, 2705]
        np.testing.assert_allclose(b.spectrum[row], flux, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b.spectrum_ivar[row], ivar, rtol=1e-6)
    r_flux = fits.getdata(path, "R_FLUX")[0]
    assert b.spectrum_ivar[0, 10] == 0 and b.spectrum[0, 10] == 0  # masked where only B covers
    assert b.spectrum[0, 2705] == r_flux[5]  # masked in B inside the overlap: R alone
    assert np.array_equal(b.spectrum[0, 2751:4900], r_flux[51:2200])  # outside the overlaps: the arm exactly


def test_redrock_rows_join_by_targetid_and_sky_fibres_are_skipped(tmp_path):
    rng = np.random.default_rng(12)
    path = tmp_path / "coadd-t-3.fits"
    flux, ivar = _spectra(rng, 5)
    tid = np.array([7, -1, 9, 11, -4321], np.int64)  # negative: sky fibres, stuck positioners
    write_coadd(path, tid, np.arange(5.0), np.arange(5.0), flux, ivar)
    assert not (tmp_path / "redrock-t-3.fits").exists()
    assert np.isnan(desi_fits.open_source([path]).redshifts()).all()
    write_redrock(tmp_path / "redrock-t-3.fits", np.array([11, 5, 7]), np.array([0.5, 0.1, 0.7]), None)
    src = desi_fits.open_source([path])
    np.testing.assert_array_equal(src.targetids(), [7, 9, 11])
    np.testing.assert_allclose(src.redshifts(), [0.7, np.nan, 0.5])
    np.testing.assert_array_equal(src.zwarns(), [0, -1, 0])
    b = src.read(1, 3)
    good = ivar[[2, 3]] > 0
    np.testing.assert_allclose(b.spectrum[good], flux[[2, 3]][good], rtol=1e-6)
    assert src.locate(1) == f"{path}:FIBERMAP[2]"


def test_several_coadds_concatenate_and_repeats_are_refused_naming_both(tmp_path):
    rng = np.random.default_rng(13)
    a, b = tmp_path / "coadd-a.fits", tmp_path / "coadd-b.fits"
    _, _, _, fa, _, _ = _coadd(a, rng, n=3, tid0=1)
    _, _, _, fb, ib, _ = _coadd(b, rng, n=2, tid0=10)
    src = desi_fits.open_source([a, b])
    np.testing.assert_array_equal(src.targetids(), [1, 2, 3, 10, 11])
    batch = src.read(2, 5)  # spans both files
    good = ib > 0
    np.testing.assert_allclose(batch.spectrum[1:][good], fb[good], rtol=1e-6)
    _coadd(b, rng, n=2, tid0=3)
    with pytest.raises(InputError, match=f"TARGETID 3 is in both {re.escape(str(a))} and {re.escape(str(b))}"):
        desi_fits.open_source([a, b]).targetids()
    with pytest.raises(InputError, match="spectra only"):
        desi_fits.open_source([a], require=("image", "spectrum"))


def _rewrite(path: Path, drop: str | None = None, shift: tuple[str, float] | None = None) -> None:
    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul if h.name != drop]
    if shift:
        next(h for h in hdus if h.name == shift[0]).data += shift[1]
    fits.HDUList(hdus).writeto(path, overwrite=True)


@pytest.mark.parametrize(
    ("drop", "shift", "pattern"),
    [
        ("FIBERMAP", None, "no FIBERMAP HDU.*TARGETID, TARGET_RA"),
        ("R_IVAR", None, r"missing HDU\(s\) R_IVAR"),
        (None, ("B_WAVELENGTH", 0.3), r"arm B's wavelengths are not on DESI's 0\.8 Å grid"),
        (None, ("Z_WAVELENGTH", 8.0), r"arm Z covers 7528\.0–9832\.0 Å, outside"),
    ],
    ids=["fibermap", "arm", "off-grid", "off-range"],
)
def test_coadds_galclip_cannot_read_are_refused_naming_the_file(tmp_path, drop, shift, pattern):
    path = tmp_path / "coadd-bad.fits"
    _coadd(path, np.random.default_rng(14), n=2, redshift=False)
    _rewrite(path, drop, shift)
    assert desi_fits.sniff(path)  # so 'galclip' reaches the reader, which names what is wrong
    with pytest.raises(InputError, match=_named(path, pattern)):
        desi_fits.open_source([path])


# ---------------------------------------------------------------- sniffing


def test_each_sniffer_takes_its_own_files_only(tmp_path):
    import h5py

    rng = np.random.default_rng(20)
    write_cutout(tmp_path / "cutout.fits", _cube(rng, 152), RA, DEC)
    _coadd(tmp_path / "coadd-s.fits", rng, n=2)
    with h5py.File(tmp_path / "survey.h5", "w") as f:
        f["targetid"] = np.arange(2)
        f["image"] = np.zeros((2, 152, 152, 3), np.float32)
    (tmp_path / "notes.fits").write_bytes(b"not a fits file at all")
    (tmp_path / "empty.fits").write_bytes(b"")
    fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(tmp_path / "plain.fits")
    cutout, coadd, redrock = tmp_path / "cutout.fits", tmp_path / "coadd-s.fits", tmp_path / "redrock-s.fits"
    assert legacysurvey_fits.sniff(cutout) and not desi_fits.sniff(cutout)
    assert desi_fits.sniff(coadd) and not legacysurvey_fits.sniff(coadd)
    for other in ("survey.h5", "notes.fits", "empty.fits", "plain.fits", "redrock-s.fits"):
        assert not legacysurvey_fits.sniff(tmp_path / other) and not desi_fits.sniff(tmp_path / other), other
    assert not desi_fits.sniff(redrock)


# ---------------------------------------------------------------- real DESI files (fastspecfit's test data)

REAL_COADDS = {
    "coadd-4-80613-thru20210324.fits": (39633345008634465, 0.3687),
    "coadd-special-dark-27247.fits": (39089837499744649, 0.0073),
}


@pytest.fixture(scope="module")
def fastspecfit_data() -> Path:
    spec = importlib.util.find_spec("fastspecfit")  # found, not imported: its dependencies are not installed
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("fastspecfit is not installed (pip install --no-deps fastspecfit==3.6.1): no real DESI coadds")
    data = Path(spec.submodule_search_locations[0]) / "test" / "data"
    if not (data / next(iter(REAL_COADDS))).exists():
        pytest.skip(f"{data}: fastspecfit's test coadds are not there")
    return data


@pytest.mark.parametrize("name", sorted(REAL_COADDS))
def test_real_desi_coadds_read_natively(fastspecfit_data, name):
    from galclip.data.sources import open_survey

    path = fastspecfit_data / name
    targetid, z = REAL_COADDS[name]
    assert desi_fits.sniff(path) and not legacysurvey_fits.sniff(path)
    assert not desi_fits.sniff(fastspecfit_data / name.replace("coadd-", "redrock-"))
    with open_survey(path, require=("spectrum",)) as src:
        assert src.layout == "desi-fits" and src.n_rows == 1
        assert src.targetids().tolist() == [targetid]
        assert abs(float(src.redshifts()[0]) - z) < 5e-5 and src.zwarns().tolist() == [0]
        b = src.read(0, 1)
    flux, ivar = b.spectrum[0], b.spectrum_ivar[0]
    assert np.isfinite(flux).all() and (ivar > 0).all()  # these coadds have no masked or zero-ivar pixel
    expected_flux, expected_ivar = _merge_by_loop(path, 0)
    np.testing.assert_allclose(flux, expected_flux, rtol=1e-6, atol=1e-6 * np.abs(expected_flux).max())
    np.testing.assert_allclose(ivar, expected_ivar, rtol=1e-6)
    with fits.open(path) as hdul:
        b_arm, r_arm, z_arm = (hdul[f"{a}_FLUX"].data[0] for a in "BRZ")
        b_ivar, r_ivar = hdul["B_IVAR"].data[0].astype(np.float64), hdul["R_IVAR"].data[0].astype(np.float64)
    assert np.array_equal(flux[:2700], b_arm[:2700])  # B alone, 3600–5759.2 Å
    assert np.array_equal(flux[2751:4900], r_arm[51:2200])  # R alone
    assert np.array_equal(flux[5026:], z_arm[126:])  # Z alone
    overlap = (b_ivar[2700:] * b_arm[2700:] + r_ivar[:51] * r_arm[:51]) / (b_ivar[2700:] + r_ivar[:51])
    np.testing.assert_allclose(flux[2700:2751], overlap, rtol=1e-6)  # 5760–5800 Å: the ivar-weighted mean


def test_real_coadd_position_matches_its_dr9_tractor_row(fastspecfit_data):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    tractor = fits.getdata(fastspecfit_data / "north" / "tractor" / "105" / "tractor-1054p567.fits", 1)
    catalogue = SkyCoord(np.asarray(tractor["RA"]) * u.deg, np.asarray(tractor["DEC"]) * u.deg)
    with desi_fits.open_source([fastspecfit_data / name for name in sorted(REAL_COADDS)]) as src:
        ra, dec = src.positions()
        ids = src.targetids()
    idx, sep, _ = SkyCoord(ra * u.deg, dec * u.deg).match_to_catalog_sky(catalogue)
    # What we found: the Tractor file holds one row, brick 1054p567 objid 2657 (REX), 1.2e-5″ from the FIBERMAP
    # TARGET_RA/DEC of 39633345008634465 (FIBERMAP names the same BRICKNAME and BRICK_OBJID); the special-dark
    # galaxy lies at RA 149.5, Dec 1.8, some 65° away, outside this brick.
    near = ids[sep.arcsec < 1.0]
    assert near.tolist() == [39633345008634465]
    assert sep.arcsec.min() < 1e-3
    row = tractor[idx[np.argmin(sep.arcsec)]]
    with fits.open(fastspecfit_data / "coadd-4-80613-thru20210324.fits") as hdul:
        fibermap = hdul["FIBERMAP"].data[0]
    assert (row["BRICKNAME"], int(row["OBJID"])) == (fibermap["BRICKNAME"], int(fibermap["BRICK_OBJID"]))
