"""The mock survey's physics and its on-disk layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from galclip.config import MockConfig
from galclip.data.layout import desi_wavelength
from galclip.data.mock import spectroscopy
from galclip.data.mock.sed import DECAM_GRZ, Cosmology, load_filter, load_templates
from galclip.data.mock.survey import MockGenerator
from galclip.data.survey import SurveyReader


@pytest.fixture(scope="module")
def generator() -> MockGenerator:
    return MockGenerator(MockConfig())


def _halpha_rest_peak(templates) -> tuple[int, float]:
    """Template with the strongest Hα and the rest wavelength of its peak sample."""
    window = (templates.wave > 6540) & (templates.wave < 6590)
    contrast = templates.flux[:, window].max(1) / np.median(
        templates.flux[:, (templates.wave > 6400) & (templates.wave < 6500)], 1
    )
    t = int(np.argmax(contrast))
    return t, float(templates.wave[window][np.argmax(templates.flux[t, window])])


@pytest.mark.parametrize("z", [0.05, 0.2, 0.37])
def test_emission_line_lands_at_redshifted_wavelength(z):
    templates, cosmo, wave = load_templates(), Cosmology(), desi_wavelength()
    t, rest_peak = _halpha_rest_peak(templates)
    coeffs = np.zeros((1, len(templates.flux)))
    coeffs[0, t] = 1e10
    flux = spectroscopy.observed_flux(coeffs, np.array([z]), wave, templates, cosmo)[0]
    expected = rest_peak * (1 + z)
    near = np.abs(wave - expected) < 30
    observed = wave[near][np.argmax(flux[near])]
    assert abs(observed - expected) <= 0.8  # one DESI pixel


def test_drawn_star_forming_galaxies_show_halpha_in_place(generator):
    batch = generator.draw(np.random.default_rng(11), 48)
    wave = desi_wavelength()
    _, rest_peak = _halpha_rest_peak(generator.templates)
    checked = 0
    for i in range(len(batch.z)):
        expected = rest_peak * (1 + batch.z[i])
        if expected > wave[-1] - 40:
            continue
        near = np.abs(wave - expected) < 30
        seg = batch.spectrum_noiseless[i, near]
        if seg.max() < 1.5 * np.median(seg):  # weak or no emission: nothing to locate
            continue
        assert abs(wave[near][np.argmax(seg)] - expected) <= 0.8
        checked += 1
    assert checked >= 3


def test_band_fluxes_are_the_filter_integrated_spectrum(generator):
    batch = generator.draw(np.random.default_rng(5), 16)
    # image light per band == total band flux (nanomaggies); FFT convolution conserves flux
    np.testing.assert_allclose(batch.image_noiseless.sum(axis=(2, 3)), batch.band_maggies * 1e9, rtol=1e-4)
    # band flux == the observed-frame SED integrated through the DECam curve, computed another way
    fine = np.linspace(3000, 11500, 40000)
    sed = spectroscopy.observed_flux(batch.coeffs, batch.z, fine, generator.templates, generator.cosmo)
    for j, name in enumerate(DECAM_GRZ):
        np.testing.assert_allclose(load_filter(name).maggies(fine, sed), batch.band_maggies[:, j], rtol=2e-3)


def test_population_is_bgs_like(generator):
    pop = generator.population
    assert 0.12 < np.median(pop.z) < 0.3 and pop.z.max() <= 0.6
    assert 10.3 < np.median(pop.log_mstar) < 11.3


def test_reader_round_trips_a_mock_file(tiny_mock):
    reader = SurveyReader(tiny_mock)
    assert reader.n_rows == 64 and len(reader.segments) == 4
    ids = reader.targetids()
    assert len(np.unique(ids)) == 64
    batch = reader.read(0, 32)
    assert batch.image.shape == (32, 152, 152, 3) and batch.spectrum.shape == (32, 7781)
    # the first generator batch, drawn again, is what the file holds (AstroCLIP's (W, H, C) order)
    redraw = MockGenerator(MockConfig(pairs=64, seed=3, batch_size=32, n_groups=4)).draw(
        np.random.default_rng([3, 0]), 32
    )
    np.testing.assert_array_equal(batch.image, redraw.image.transpose(0, 3, 2, 1))
    np.testing.assert_array_equal(batch.spectrum, redraw.spectrum)
    np.testing.assert_allclose(batch.redshift, redraw.z.astype(np.float32))
    # rows spanning two groups read as one batch
    np.testing.assert_array_equal(reader.read(10, 20).targetid, ids[10:20])


def test_catalogue_labels_are_the_truth(tiny_mock):
    from galclip.data.catalogue import join_labels

    reader = SurveyReader(tiny_mock)
    labels = join_labels(reader.targetids(), tiny_mock / "provabgs.h5")
    hit = np.isfinite(labels.redshift)
    assert 0.6 < hit.mean() <= 1.0
    np.testing.assert_allclose(labels.redshift[hit], reader.redshifts()[hit], rtol=1e-6)
    with h5py.File(tiny_mock / "provabgs.h5") as f:
        n_spurious = int((f["PROVABGS_LOGMSTAR_BF"][:] <= 0).sum())
    assert labels.n_after_cuts == labels.n_catalogue - n_spurious


# --- catalogue quantities: PROVABGS properties, positions, Tractor-like photometry --------------------------------


def _catalogue(path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f[k][:] for k in f}


def test_pixels_are_unchanged_by_the_catalogue_quantities(generator):
    # numbers drawn before the catalogue got its own random streams: the pixel stream of a seed is as it was
    batch = generator.draw(np.random.default_rng([3, 0]), 32)
    np.testing.assert_allclose(batch.z[:3], [0.05266654, 0.22725891, 0.20930607], rtol=1e-6)
    np.testing.assert_allclose(batch.image[0].sum(axis=(1, 2)), [127.40473, 285.62460, 521.98193], rtol=1e-4)
    np.testing.assert_allclose(batch.spectrum[0, :3], [4.514999, 3.379786, 6.034180], rtol=1e-4)
    # and the catalogue's own stream does not touch it
    other = generator.draw(np.random.default_rng([3, 0]), 32, aux_rng=np.random.default_rng(99))
    np.testing.assert_array_equal(other.image, batch.image)
    assert not np.array_equal(other.flux, batch.flux)


def test_catalogue_has_the_vac_and_tractor_columns(tiny_mock):
    from galclip.data.mock.survey import CATALOGUE_NAMES, SKY_PATCH, TARGETID_BASE

    cat = _catalogue(tiny_mock / "provabgs.h5")
    assert set(CATALOGUE_NAMES) <= set(cat)
    ok = cat["PROVABGS_LOGMSTAR_BF"] > 0
    ra_lo, ra_hi, dec_lo, dec_hi = SKY_PATCH
    assert ((cat["RA"] >= ra_lo) & (cat["RA"] <= ra_hi) & (cat["DEC"] >= dec_lo) & (cat["DEC"] <= dec_hi)).all()
    z_mw, age, sfr = cat["PROVABGS_Z_MW"][ok], cat["PROVABGS_TAGE_MW"][ok], cat["PROVABGS_AVGSFR_1GYR"][ok]
    assert ((z_mw > 5e-5) & (z_mw <= 0.0501)).all()
    assert ((age > 0.05) & (age < Cosmology().age_gyr(cat["Z_HP"][ok]))).all()
    log_ssfr = np.log10(sfr) - cat["PROVABGS_LOGMSTAR_BF"][ok]
    assert ((log_ssfr > -14.5) & (log_ssfr < -8.5)).all()
    # a failed fit is -999 in every PROVABGS column, as in the VAC
    bad = ~ok
    assert bad.any()
    for name in ("PROVABGS_Z_MW", "PROVABGS_TAGE_MW", "PROVABGS_AVGSFR_1GYR"):
        assert (cat[name][bad] == -999).all()
    # Tractor photometry: magnitudes are the measured fluxes', errors positive
    for band in "GRZ":
        flux, ivar, mag = cat[f"FLUX_{band}"], cat[f"FLUX_IVAR_{band}"], cat[f"MAG_{band}"]
        assert (ivar > 0).all() and np.isfinite(flux).all()
        pos = flux > 0
        np.testing.assert_allclose(mag[pos], 22.5 - 2.5 * np.log10(flux[pos]), rtol=1e-12)
        assert np.isnan(mag[~pos]).all()
    # catalogue-only rows (no pair) are galaxies of the same population
    extra = cat["TARGETID"] < TARGETID_BASE
    assert extra.any()
    assert ((cat["PROVABGS_LOGMSTAR_BF"][extra] > 8) & (cat["PROVABGS_LOGMSTAR_BF"][extra] < 12.5)).all()
    assert ((cat["MAG_R"][extra] > 12) & (cat["MAG_R"][extra] < 20.5)).all()
    assert (cat["PROVABGS_TAGE_MW"][extra] > 0).all() and (cat["PROVABGS_AVGSFR_1GYR"][extra] > 0).all()


def test_survey_groups_carry_the_catalogue_positions(tiny_mock):
    reader = SurveyReader(tiny_mock)
    ra, dec = reader.positions()
    assert np.isfinite(ra).all() and np.isfinite(dec).all()
    with h5py.File(tiny_mock / "survey.h5") as f:
        assert f["0"]["ra"].dtype == np.float64 and f["0"]["dec"].dtype == np.float64
    cat = _catalogue(tiny_mock / "provabgs.h5")
    ids = reader.targetids()
    pos = {int(t): (r, d) for t, r, d in zip(cat["TARGETID"], cat["RA"], cat["DEC"])}
    hit = [i for i, t in enumerate(ids) if int(t) in pos]
    assert len(hit) > 40
    np.testing.assert_array_equal(ra[hit], [pos[int(ids[i])][0] for i in hit])
    np.testing.assert_array_equal(dec[hit], [pos[int(ids[i])][1] for i in hit])


def test_log_ssfr_label_is_sfr_over_stellar_mass(tiny_mock):
    from galclip.data.catalogue import join_labels

    reader = SurveyReader(tiny_mock)
    labels = join_labels(reader.targetids(), tiny_mock / "provabgs.h5")
    cat = _catalogue(tiny_mock / "provabgs.h5")
    row = {int(t): i for i, t in enumerate(cat["TARGETID"])}
    ids = reader.targetids()
    hit = np.flatnonzero(np.isfinite(labels.values["log_ssfr"]))
    assert len(hit) > 40
    i = np.array([row[int(ids[k])] for k in hit])
    sfr, mass, z_mw = cat["PROVABGS_AVGSFR_1GYR"][i], cat["PROVABGS_LOGMSTAR_BF"][i], cat["PROVABGS_Z_MW"][i]
    np.testing.assert_allclose(labels.values["log_ssfr"][hit], np.log10(sfr) - mass, atol=1e-5)
    assert np.abs(labels.values["log_ssfr"][hit] - (np.log10(sfr) - np.log10(z_mw))).min() > 5  # not AstroCLIP's bug
    np.testing.assert_allclose(labels.values["log_metallicity"][hit], np.log10(z_mw), atol=1e-5)
    np.testing.assert_allclose(labels.values["age"][hit], cat["PROVABGS_TAGE_MW"][i], rtol=1e-6)


def test_photometric_scatter_matches_the_stated_flux_errors(generator):
    gals = generator.draw_catalogue(np.random.default_rng(21), 400)
    true = gals.band_maggies * 1e9
    chi = (gals.flux - true) * np.sqrt(gals.flux_ivar)
    chi2_per_dof = float((chi**2).mean())
    assert 0.85 < chi2_per_dof < 1.15  # 1200 dof: ±0.04 is 1σ
    # in magnitudes: the scatter about the truth is σ_mag = 2.5/ln10 · σ_flux / flux
    sigma_mag = 2.5 / np.log(10) / (np.sqrt(gals.flux_ivar) * true)
    pull = (gals.mag - gals.mag_true) / sigma_mag
    assert 0.85 < float(np.nanstd(pull)) < 1.15
    # noise is there and realistic: DR9-like depths, centimag errors at r ~ 19
    assert np.abs(gals.mag - gals.mag_true).max() > 0
    np.testing.assert_allclose(np.median(gals.psf_depth, axis=0), [24.0, 23.4, 22.5], atol=0.1)
    near = np.abs(gals.mag_true[:, 1] - 19) < 0.5
    assert 0.003 < np.median(sigma_mag[near, 1]) < 0.05
    # extended galaxies are noisier than point sources at the same depth
    point = 10 ** (-0.4 * (gals.psf_depth - 22.5)) / 5
    assert (1 / np.sqrt(gals.flux_ivar) > point).all()


def test_catalogue_photometry_is_the_batch_drawn_again(tiny_mock):
    reader = SurveyReader(tiny_mock)
    ra, dec = reader.positions()
    redraw = MockGenerator(MockConfig(pairs=64, seed=3, batch_size=32, n_groups=4)).draw(
        np.random.default_rng([3, 0]), 32, aux_rng=np.random.default_rng([3, 0, 1]), positions=(ra[:32], dec[:32])
    )
    cat = _catalogue(tiny_mock / "provabgs.h5")
    row = {int(t): i for i, t in enumerate(cat["TARGETID"])}
    ids = reader.targetids()[:32]
    have = [k for k, t in enumerate(ids) if int(t) in row]
    i = [row[int(ids[k])] for k in have]
    for j, band in enumerate("GRZ"):
        np.testing.assert_allclose(cat[f"FLUX_{band}"][i], redraw.flux[have, j], rtol=1e-12)
        np.testing.assert_allclose(cat[f"MAG_{band}"][i], redraw.mag[have, j], rtol=1e-12)
    fitted = cat["PROVABGS_LOGMSTAR_BF"][i] > 0  # not a spurious (-999) row
    for name, truth in (("PROVABGS_TAGE_MW", redraw.tage_mw), ("PROVABGS_AVGSFR_1GYR", redraw.avg_sfr_1gyr)):
        np.testing.assert_allclose(cat[name][i][fitted], truth[have][fitted], rtol=1e-12)


def test_non_positive_flux_gives_a_magnitude_the_cuts_remove():
    from galclip.data.catalogue import apply_cuts
    from galclip.data.mock.photometry import magnitudes

    mag = magnitudes(np.array([-0.3, 0.0, 1.0, 100.0]))
    assert np.isnan(mag[:2]).all()
    np.testing.assert_allclose(mag[2:], [22.5, 17.5])
    cols = {"PROVABGS_LOGMSTAR_BF": np.full(4, 10.0), "Z_HP": np.full(4, 0.1), "MAG_G": mag, "MAG_R": mag}
    cols["MAG_Z"] = mag
    np.testing.assert_array_equal(apply_cuts(cols), [False, False, True, True])


def test_stellar_properties_follow_the_template_bookkeeping():
    from scipy.optimize import brentq

    from galclip.data.mock.population import build_population, stellar_properties

    tmpl, cosmo = load_templates(), Cosmology()
    # one template alone: metallicity and sSFR are that template's
    for t in range(len(tmpl.flux)):
        coeffs = np.zeros((1, len(tmpl.flux)))
        coeffs[0, t] = 3e10
        p = stellar_properties(coeffs, np.array([0.2]), tmpl, cosmo)
        np.testing.assert_allclose(p.z_mw, tmpl.mets[t], rtol=1e-6)
        np.testing.assert_allclose(p.avg_sfr_1gyr, 3e10 * tmpl.m1000[t] / 1e9, rtol=1e-6)
        np.testing.assert_allclose(p.log_mstar, np.log10(3e10 * tmpl.mremain[t]), rtol=1e-9)
        assert 0 < p.tage_mw[0] < cosmo.age_gyr(0.2)
    # the age: the mass-weighted lookback time of the three-bin history, integrated numerically
    pop = build_population()
    coeffs, z = pop.coeffs[:5], pop.z[:5]
    p = stellar_properties(coeffs, z, tmpl, cosmo)
    for k in range(5):
        b300, b1000, big_t = p.b300[k], p.b1000[k], float(cosmo.age_gyr(z[k]))
        rate = (b1000 - b300) / 0.7
        span = big_t - 1.0
        kappa = brentq(lambda x, r=rate, s=span, b=b1000: r * np.expm1(x * s) / x - (1 - b), -19.9, 19.9)
        t = np.linspace(1.0, big_t, 200001)
        sfr = rate * np.exp(kappa * (t - 1.0))
        old_mean = np.trapezoid(t * sfr, t) / np.trapezoid(sfr, t)
        expected = 0.15 * b300 + 0.65 * (b1000 - b300) + (1 - b1000) * old_mean
        np.testing.assert_allclose(p.tage_mw[k], expected, rtol=1e-4)
    # early formers are older: age falls as the recent share rises
    many = stellar_properties(pop.coeffs[:2000], pop.z[:2000], tmpl, cosmo)
    assert np.corrcoef(many.tage_mw, many.b1000)[0, 1] < -0.8


def test_sky_positions_are_uniform_on_the_patch_and_apart():
    from galclip.data.mock.survey import draw_sky_positions

    patch = (10.0, 10.05, -2.0, -1.95)  # a tiny patch: 500 uniform points would have ~25 pairs within 5″
    ra, dec = draw_sky_positions(np.random.default_rng(0), 500, patch, 5.0)
    assert ((ra >= 10.0) & (ra <= 10.05) & (dec >= -2.0) & (dec <= -1.95)).all()
    r, d = np.radians(ra), np.radians(dec)
    xyz = np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)
    sep = np.degrees(np.arccos(np.clip(xyz @ xyz.T, -1, 1))) * 3600
    np.fill_diagonal(sep, np.inf)
    assert sep.min() >= 5.0
    # the same seed, the same positions; uniform in sin(dec) over a big patch
    ra2, dec2 = draw_sky_positions(np.random.default_rng(0), 500, patch, 5.0)
    np.testing.assert_array_equal(ra, ra2)
    _, dec_big = draw_sky_positions(np.random.default_rng(1), 20000, (0.0, 90.0, 0.0, 60.0), 0.0)
    frac_above_30 = (dec_big > 30).mean()
    expected = (np.sin(np.radians(60)) - 0.5) / np.sin(np.radians(60))
    assert abs(frac_above_30 - expected) < 0.02


def test_same_seed_same_mock(tmp_path):
    from galclip.data.mock.survey import generate_mock

    config = MockConfig(pairs=12, seed=8, batch_size=8, n_groups=2)
    files = []
    for name in ("a", "b"):
        generate_mock(config, tmp_path / name)
        files.append(tmp_path / name)
    for fname in ("survey.h5", "provabgs.h5"):
        with h5py.File(files[0] / fname) as fa, h5py.File(files[1] / fname) as fb:
            names: list[str] = []
            fa.visititems(lambda name, node, out=names: out.append(name) if isinstance(node, h5py.Dataset) else None)
            assert "0/image" in names or "TARGETID" in names
            for n in names:
                np.testing.assert_array_equal(fa[n][()], fb[n][()])
    generate_mock(MockConfig(pairs=12, seed=9, batch_size=8, n_groups=2), tmp_path / "c")
    assert not np.array_equal(
        _catalogue(files[0] / "provabgs.h5")["RA"], _catalogue(tmp_path / "c" / "provabgs.h5")["RA"]
    )
