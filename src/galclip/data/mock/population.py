"""Galaxy population: real SDSS galaxies fitted with the NMF templates, moved to BGS depths.

Each of kcorrect's 10,000 SDSS galaxies (``gst_tests_small.fits``: spectroscopic redshift and
ugriz model fluxes) is fitted by non-negative least squares with the five templates, which
gives its star-formation mix and stellar mass (Σ coeff·mremain). The sample is then
broadened to DESI BGS redshifts: z' = stretch·z, with the formed mass scaled by
(D_L(z')/D_L(z))²·(1+z')/(1+z)·10^(-0.4·Δm), Δm = 19.5 - 17.77 the depth difference of the
BGS and SDSS main-sample limits, so each galaxy keeps its place in a flux-limited sample;
galaxies beyond ``z_max`` or fainter than the BGS limit (r < 19.5) are dropped.

``stellar_properties`` turns template coefficients into the PROVABGS quantities (stellar mass,
mass-weighted metallicity and age, SFR over the last Gyr) with kcorrect's per-template bookkeeping.
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
    Templates,
    kcorrect_data_dir,
    load_filter,
    load_templates,
    template_maggies,
)

logger = logging.getLogger(__name__)

BGS_R_LIMIT = 19.5
SDSS_MAIN_R_LIMIT = 17.77
YOUNG_GYR, RECENT_GYR = 0.3, 1.0  # kcorrect's M300 and M1000 lookback times
KAPPA_BOUND = 20.0  # |κ| limit (1/Gyr) of the old stars' exponential star-formation history


@dataclass(frozen=True)
class StellarProperties:
    """PROVABGS-like quantities of galaxies, (n,) each: see :func:`stellar_properties`."""

    log_mstar: np.ndarray  # log10 M☉ in stars and remnants
    z_mw: np.ndarray  # mass-weighted metallicity, a mass fraction
    tage_mw: np.ndarray  # mass-weighted age, Gyr
    avg_sfr_1gyr: np.ndarray  # M☉/yr, averaged over the last Gyr
    b300: np.ndarray  # share of the stars formed in the last 300 Myr
    b1000: np.ndarray  # share of the stars formed in the last 1 Gyr


def _exp_mass(kappa: np.ndarray, span: np.ndarray) -> np.ndarray:
    """∫_0^span exp(κ t) dt (κ in 1/Gyr, span in Gyr), finite at κ = 0."""
    small = np.abs(kappa) < 1e-9
    safe = np.where(small, 1.0, kappa)
    return np.where(small, span, np.expm1(safe * span) / safe)


def _exp_mean_time(kappa: np.ndarray, span: np.ndarray) -> np.ndarray:
    """Mean of t over [0, span] weighted by exp(κ t): span / (1 - e^(-κ span)) - 1/κ (span/2 at κ = 0)."""
    small = np.abs(kappa) < 1e-9
    safe = np.where(small, 1.0, kappa)
    return np.where(small, span / 2, span / -np.expm1(-safe * span) - 1.0 / safe)


def stellar_properties(coeffs: np.ndarray, z: np.ndarray, templates: Templates, cosmo: Cosmology) -> StellarProperties:
    """PROVABGS quantities from template coefficients: coeffs (n, T) M☉ formed per template, z (n,).

    With c_t the M☉ formed in template t and kcorrect's per-template INTSFH, MREMAIN, METS, M300, M1000 (all per
    M☉ formed; see :class:`~galclip.data.mock.sed.Templates`):

    * M* = Σ c_t mremain_t (stars and remnants; PROVABGS_LOGMSTAR_BF = log10 M*);
    * Z_MW = Σ c_t mremain_t mets_t / M* (the metallicity of the current stellar mass, as kcorrect's
      ``Kcorrect.derived`` computes it; the templates span 0.0057-0.05);
    * AVG_SFR = Σ c_t m1000_t / 10⁹ yr (M☉/yr: the mass formed in the last Gyr over that Gyr, PROVABGS's
      AVGSFR_1GYR), so log sSFR = log10 AVG_SFR - log10 M*;
    * TAGE_MW, the age weighted by the mass formed (Gyr): with M_f = Σ c_t intsfh_t, b300 = Σ c_t m300_t / M_f and
      b1000 = Σ c_t m1000_t / M_f, the star-formation history in lookback time t is constant over [0, 0.3] Gyr
      (holding b300) and over [0.3, 1] Gyr (holding b1000 - b300, a rate s = (b1000 - b300) / 0.7 Gyr), and before
      that ∝ s·exp(κ (t - 1)) out to the age of the universe T(z), κ chosen so that it holds the rest, 1 - b1000
      (continuous at 1 Gyr; κ > 0 for galaxies that formed their stars early, |κ| ≤ 20/Gyr). Then
      TAGE_MW = 0.15·b300 + 0.65·(b1000 - b300) + (1 - b1000)·(1 + ⟨t⟩), ⟨t⟩ = L / (1 - e^(-κL)) - 1/κ, L = T - 1.

    Every quantity is a ratio of template sums, so the mock's overall mass scatter moves only M* and AVG_SFR.
    """
    coeffs = np.atleast_2d(np.asarray(coeffs, np.float64))
    formed = coeffs @ templates.intsfh
    mass = coeffs @ templates.mremain
    z_mw = (coeffs @ (templates.mremain * templates.mets)) / mass
    recent = coeffs @ templates.m1000
    b300 = np.clip((coeffs @ templates.m300) / formed, 0.0, 1.0)
    b1000 = np.clip(recent / formed, b300, 1.0)
    span = np.maximum(cosmo.age_gyr(z) - RECENT_GYR, 1e-3)
    rate = (b1000 - b300) / (RECENT_GYR - YOUNG_GYR)
    target = (1.0 - b1000) / np.maximum(rate, 1e-12)  # ∫ exp(κ t) dt over the old span, in units of that rate
    lo, hi = np.full(len(span), -KAPPA_BOUND), np.full(len(span), KAPPA_BOUND)
    for _ in range(60):  # _exp_mass grows with κ
        mid = 0.5 * (lo + hi)
        above = _exp_mass(mid, span) > target
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    old_age = RECENT_GYR + _exp_mean_time(0.5 * (lo + hi), span)
    tage = 0.5 * YOUNG_GYR * b300 + 0.5 * (YOUNG_GYR + RECENT_GYR) * (b1000 - b300) + (1.0 - b1000) * old_age
    return StellarProperties(np.log10(mass), z_mw, tage, recent / 1e9, b300, b1000)


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
