"""Galaxy population: real SDSS galaxies fitted with the NMF templates, moved to BGS depths.

Each of kcorrect's 10,000 SDSS galaxies (``gst_tests_small.fits``: spectroscopic redshift and
ugriz model fluxes) is fitted by non-negative least squares with the five templates, which
gives its star-formation mix and stellar mass (Σ coeff·mremain). The sample is then
broadened to DESI BGS redshifts: z' = stretch·z, with the formed mass scaled by
(D_L(z')/D_L(z))²·(1+z')/(1+z)·10^(-0.4·Δm), Δm = 19.5 - 17.77 the depth difference of the
BGS and SDSS main-sample limits, so each galaxy keeps its place in a flux-limited sample;
galaxies beyond ``z_max`` or fainter than the BGS limit (r < 19.5) are dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import nnls

from galclip.data.mock.sed import (
    DECAM_GRZ,
    SDSS_UGRIZ,
    Cosmology,
    kcorrect_data_dir,
    load_filter,
    load_templates,
    template_maggies,
)

logger = logging.getLogger(__name__)

BGS_R_LIMIT = 19.5
SDSS_MAIN_R_LIMIT = 17.77


@dataclass(frozen=True)
class Population:
    """Galaxies to draw from: coeffs (n, T) M☉ formed per template, z (n,), log_mstar (n,)."""

    coeffs: np.ndarray
    z: np.ndarray
    log_mstar: np.ndarray
    young_fraction: np.ndarray  # (n,) share of stars formed in the last 300 Myr
    source_row: np.ndarray  # (n,) row in gst_tests_small.fits


def _read_sdss_sample() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from astropy.io import fits

    with fits.open(kcorrect_data_dir() / "test" / "gst_tests_small.fits") as hdul:
        data = hdul[1].data
        z = np.asarray(data["Z"], np.float64)
        flux = np.asarray(data["MODELFLUX"], np.float64) * 1e-9  # nanomaggies -> maggies
        ivar = np.asarray(data["MODELFLUX_IVAR"], np.float64) * 1e18
    return z, flux, ivar


def fit_coefficients(z: np.ndarray, maggies: np.ndarray, ivar: np.ndarray, cosmo: Cosmology) -> np.ndarray:
    """NNLS template fit of ugriz maggies (n, 5) at redshifts (n,) -> M☉ formed (n, T)."""
    tmpl = load_templates()
    filters = tuple(load_filter(f) for f in SDSS_UGRIZ)
    basis = template_maggies(tmpl, filters, z, cosmo)  # (n, T, F)
    coeffs = np.zeros((z.size, len(tmpl.flux)))
    sigma_floor = 0.02 * np.abs(maggies)  # 2% calibration floor
    err = np.sqrt(1.0 / np.clip(ivar, 1e-30, None) + sigma_floor**2)
    for i in range(z.size):
        if not np.isfinite(maggies[i]).all() or ivar[i].min() <= 0:
            continue
        w = 1.0 / err[i]
        scale = basis[i].max()
        coeffs[i], _ = nnls((basis[i].T * w[:, None]) / scale, maggies[i] * w)
        coeffs[i] /= scale
    return coeffs


@lru_cache(maxsize=4)
def build_population(redshift_stretch: float = 2.0, z_max: float = 0.6, r_limit: float = BGS_R_LIMIT) -> Population:
    """Fit, broaden and flux-limit the SDSS sample (deterministic; cached per process)."""
    cosmo = Cosmology()
    tmpl = load_templates()
    z, maggies, ivar = _read_sdss_sample()
    good = (z > 0.005) & np.isfinite(maggies).all(1) & (maggies[:, 2] > 0)
    rows = np.flatnonzero(good)
    coeffs = fit_coefficients(z[rows], maggies[rows], ivar[rows], cosmo)
    ok = coeffs.sum(1) > 0
    rows, coeffs, z0 = rows[ok], coeffs[ok], z[rows][ok]

    z_new = z0 * redshift_stretch
    depth_gain = 10 ** (-0.4 * (r_limit - SDSS_MAIN_R_LIMIT))
    scale = (cosmo.luminosity_mpc(z_new) / cosmo.luminosity_mpc(z0)) ** 2 * (1 + z_new) / (1 + z0) * depth_gain
    coeffs = coeffs * scale[:, None]
    decam_r = load_filter(DECAM_GRZ[1])
    r_mag = 22.5 - 2.5 * np.log10(
        np.clip(np.einsum("nt,nt->n", coeffs, template_maggies(tmpl, (decam_r,), z_new, cosmo)[:, :, 0]), 1e-30, None)
        * 1e9
    )
    keep = (z_new <= z_max) & (r_mag < r_limit)
    coeffs, z_new, rows = coeffs[keep], z_new[keep], rows[keep]
    mass = coeffs @ tmpl.mremain
    young = (coeffs @ tmpl.m300) / coeffs.sum(1)
    logger.info(
        "mock population: %d of %d SDSS galaxies kept (z <= %.2f, r < %.1f), median z %.3f, median log M* %.2f",
        len(rows),
        len(z),
        z_max,
        r_limit,
        np.median(z_new),
        np.median(np.log10(mass)),
    )
    return Population(coeffs, z_new, np.log10(mass), young, rows)
