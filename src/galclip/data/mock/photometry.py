"""Tractor-like catalogue photometry: each galaxy's g, r, z fluxes measured at its own depth.

A real Legacy Survey catalogue row holds FLUX_G/R/Z (nanomaggies, the fitted model's total flux) with FLUX_IVAR_G/R/Z
(1/σ², nanomaggies⁻²); its magnitudes are 22.5 - 2.5 log10(flux), undefined where noise pushed the flux to ≤ 0. The
mock does the same:

* **Depth.** The 5σ point-source depth of each galaxy follows its own cutout: DR9-south medians
  (``DR9_PSF_DEPTH``: g 24.0, r 23.4, z 22.5 AB) moved by the image's sky noise and seeing relative to their
  medians, m_5σ = m_DR9 - 2.5 log10((σ_sky / σ̃_sky) · (FWHM / FW̃HM)), since the flux error of a point source
  fitted with the PSF is σ_sky·√(4π)·σ_PSF (its noise-equivalent area grows as FWHM²). A noisy or blurry cutout
  thus has shallow photometry too; the depths spread by ±0.35-0.45 mag (16-84%) around the medians.
* **Extent.** A galaxy is fitted with a profile wider than the PSF, which covers more sky: modelled as Gaussians
  with the same half-light radii, the noise-equivalent area grows by 1 + (σ_gal/σ_PSF)² = 1 + (2 r_e / FWHM)², so
  σ_flux = σ_psf · √(1 + (2 r_e / FWHM)²) with σ_psf = 10^(-0.4 (m_5σ - 22.5)) / 5 nanomaggies.
* **Noise.** FLUX = true flux + N(0, σ_flux); FLUX_IVAR = 1/σ_flux²; MAG = 22.5 - 2.5 log10(FLUX), NaN where
  FLUX ≤ 0 (the catalogue cuts, MAG_* > 0, then drop the row, as with real data).

Calibration errors and blending, which also limit real photometric redshifts, are not modelled: what the colours
carry here is the truth plus the statistical noise only.
"""

from __future__ import annotations

import numpy as np

from galclip.data.mock import imaging

NANOMAGGY_ZERO_POINT = 22.5
DR9_PSF_DEPTH = np.array([24.0, 23.4, 22.5])  # median 5σ point-source depth, g, r, z (AB), Legacy Surveys DR9 south
SEEING_FWHM_RANGE = (1.0, 1.6)  # r-band seeing drawn per cutout, arcsec (imaging.SEEING_BAND_FACTOR per band)
MEDIAN_SKY_SIGMA = imaging.SKY_NOISE_SCALE + imaging.SKY_NOISE_LOC  # median of imaging.draw_sky_noise, (3,)
MEDIAN_SEEING_FWHM = 0.5 * (SEEING_FWHM_RANGE[0] + SEEING_FWHM_RANGE[1]) * imaging.SEEING_BAND_FACTOR  # (3,)


def band_fwhm(seeing_fwhm_arcsec: np.ndarray) -> np.ndarray:
    """Per-band PSF FWHM (n, 3) arcsec from the r-band seeing (n,)."""
    return np.asarray(seeing_fwhm_arcsec, np.float64)[:, None] * imaging.SEEING_BAND_FACTOR[None, :]


def psf_depth(sky_sigma: np.ndarray, seeing_fwhm_arcsec: np.ndarray) -> np.ndarray:
    """5σ point-source depth (n, 3) AB of cutouts with per-pixel sky noise (n, 3) and r-band seeing (n,)."""
    ratio = (np.asarray(sky_sigma, np.float64) / MEDIAN_SKY_SIGMA) * (
        band_fwhm(seeing_fwhm_arcsec) / MEDIAN_SEEING_FWHM
    )
    return DR9_PSF_DEPTH[None, :] - 2.5 * np.log10(ratio)


def extent_factor(r_e_arcsec: np.ndarray, seeing_fwhm_arcsec: np.ndarray) -> np.ndarray:
    """σ_flux(galaxy) / σ_flux(point source), (n, 3): √(1 + (2 r_e / FWHM)²) per band."""
    return np.sqrt(1.0 + (2.0 * np.asarray(r_e_arcsec, np.float64)[:, None] / band_fwhm(seeing_fwhm_arcsec)) ** 2)


def flux_sigma(depth: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Flux error (nanomaggies) at 5σ depth ``depth`` (AB), inflated by ``extent``."""
    return 10 ** (-0.4 * (np.asarray(depth, np.float64) - NANOMAGGY_ZERO_POINT)) / 5.0 * extent


def magnitudes(flux_nmgy: np.ndarray) -> np.ndarray:
    """AB magnitudes 22.5 - 2.5 log10(flux) of nanomaggy fluxes; NaN where flux ≤ 0 or not finite."""
    flux = np.asarray(flux_nmgy, np.float64)
    ok = np.isfinite(flux) & (flux > 0)
    return np.where(ok, NANOMAGGY_ZERO_POINT - 2.5 * np.log10(np.where(ok, flux, 1.0)), np.nan)


def observe(rng: np.random.Generator, true_nmgy: np.ndarray, sigma_nmgy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measured fluxes and their inverse variances, (n, 3) each: truth + N(0, σ), 1/σ²."""
    sigma = np.asarray(sigma_nmgy, np.float64)
    flux = np.asarray(true_nmgy, np.float64) + rng.standard_normal(sigma.shape) * sigma
    return flux, 1.0 / sigma**2
