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
