"""Spectral energy distributions: kcorrect NMF templates, filter curves, AB photometry, distances.

All data come from the ``kcorrect`` package (BSD-3): the five NMF templates of
``kcorrect-default-v4.fits`` (erg/s/cm²/Å at 10 pc per solar mass formed, with the per-template
star-formation bookkeeping of its INTSFH, MREMAIN, METS, M300 and M1000 HDUs), the DECam and SDSS
response curves, and the 10,000 SDSS galaxies of ``gst_tests_small.fits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

C_ANGSTROM_PER_S = 2.99792458e18
AB_ZERO_FNU = 3631e-23  # erg/s/cm²/Hz
PC_IN_MPC = 1e-6


def kcorrect_data_dir() -> Path:
    import kcorrect

    return Path(kcorrect.__file__).parent / "data"


@dataclass(frozen=True)
class Templates:
    """NMF templates: wave (L,) Å rest frame; flux (T, L) erg/s/cm²/Å at 10 pc per M☉ formed.

    The per-template quantities are kcorrect's (``kcorrect.template.SED``), each per unit of ``intsfh``:
    ``intsfh`` the integrated star formation (M☉ formed; 1 for every default template), ``mremain`` the mass left
    in stars and remnants, ``mets`` the metallicity (mass fraction) of those current stars and remnants, ``m300``
    and ``m1000`` the mass formed in the last 300 Myr and 1 Gyr."""

    wave: np.ndarray
    flux: np.ndarray
    mremain: np.ndarray  # (T,) surviving stellar mass per M☉ formed
    m300: np.ndarray  # (T,) share of star formation in the last 300 Myr
    m1000: np.ndarray  # (T,) share of star formation in the last 1 Gyr
    mets: np.ndarray  # (T,) metallicity (mass fraction) of the surviving stars and remnants
    intsfh: np.ndarray  # (T,) M☉ formed (the unit the other quantities are per)

    def rest_flux(self, rest_wave: np.ndarray) -> np.ndarray:
        """Templates at rest wavelengths (..., n) -> (T, ..., n), zero outside coverage."""
        flat = rest_wave.reshape(-1)
        out = np.stack([np.interp(flat, self.wave, f, left=0.0, right=0.0) for f in self.flux])
        return out.reshape((len(self.flux),) + rest_wave.shape)


@lru_cache(maxsize=1)
def load_templates() -> Templates:
    from astropy.io import fits

    with fits.open(kcorrect_data_dir() / "templates" / "kcorrect-default-v4.fits") as hdul:
        row = hdul["FLUX"].data[0]
        wave = np.asarray(row["wave"], np.float64)
        flux = np.asarray(row["flux"], np.float64).reshape(-1, wave.size)
        mremain = np.asarray(hdul["MREMAIN"].data, np.float64)
        m300 = np.asarray(hdul["M300"].data, np.float64)
        m1000 = np.asarray(hdul["M1000"].data, np.float64)
        mets = np.asarray(hdul["METS"].data, np.float64)
        intsfh = np.asarray(hdul["INTSFH"].data, np.float64)
    return Templates(wave, flux, mremain, m300, m1000, mets, intsfh)


@dataclass(frozen=True)
class Filter:
    """Photon-counting response: wave (n,) Å, response (n,), with the AB normalisation."""

    name: str
    wave: np.ndarray
    response: np.ndarray

    @property
    def ab_norm(self) -> float:
        """∫ f_AB,λ λ R dλ for the AB zero point (erg/s/cm² × Å)."""
        fab = AB_ZERO_FNU * C_ANGSTROM_PER_S / self.wave**2
        return float(np.trapezoid(fab * self.wave * self.response, self.wave))

    def maggies(self, wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
        """AB maggies of spectra f_λ (..., n) erg/s/cm²/Å sampled at ``wave`` (n,) Å."""
        resp = np.interp(wave, self.wave, self.response, left=0.0, right=0.0)
        return np.trapezoid(flux * wave * resp, wave, axis=-1) / self.ab_norm


@cache
def load_filter(name: str) -> Filter:
    """A kcorrect response curve by file stem, e.g. ``decam_r`` or ``sdss_r0``."""
    path = kcorrect_data_dir() / "responses" / f"{name}.dat"
    rows, column = [], None
    for line in path.read_text().splitlines():
        if not line.strip().startswith("|"):
            continue
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if column is None:  # header row: use the atmosphere-included "pass" column
            column = parts.index("pass")
            continue
        rows.append((float(parts[0]), float(parts[column])))
    arr = np.asarray(rows)
    return Filter(name, arr[:, 0], np.clip(arr[:, 1], 0.0, None))


DECAM_GRZ = ("decam_g", "decam_r", "decam_z")
SDSS_UGRIZ = ("sdss_u0", "sdss_g0", "sdss_r0", "sdss_i0", "sdss_z0")


class Cosmology:
    """Flat ΛCDM distances on a precomputed redshift grid (H0 = 70, Ωm = 0.3 by default)."""

    def __init__(self, h0: float = 70.0, omega_m: float = 0.3, z_max: float = 3.0):
        self.h0, self.omega_m = h0, omega_m
        self.z_grid = np.linspace(0.0, z_max, 6001)
        e = np.sqrt(omega_m * (1 + self.z_grid) ** 3 + (1 - omega_m))
        hubble_mpc = C_ANGSTROM_PER_S * 1e-13 / h0  # c/H0 in Mpc (c in km/s)
        inv = 1.0 / e
        self.dc_grid = hubble_mpc * np.concatenate(
            [[0.0], np.cumsum(0.5 * (inv[1:] + inv[:-1]) * np.diff(self.z_grid))]
        )

    def comoving_mpc(self, z: np.ndarray) -> np.ndarray:
        return np.interp(z, self.z_grid, self.dc_grid)

    def luminosity_mpc(self, z: np.ndarray) -> np.ndarray:
        return (1 + np.asarray(z)) * self.comoving_mpc(z)

    def angular_mpc(self, z: np.ndarray) -> np.ndarray:
        return self.comoving_mpc(z) / (1 + np.asarray(z))

    def age_gyr(self, z: np.ndarray) -> np.ndarray:
        """Age of the universe at redshift z, Gyr (flat ΛCDM, radiation neglected):
        t(z) = 2 / (3 H0 √Ω_Λ) · asinh(√(Ω_Λ/Ω_m) · (1+z)^-1.5); 13.47 Gyr today for H0 = 70, Ω_m = 0.3."""
        omega_l = 1.0 - self.omega_m
        hubble_gyr = 977.792221 / self.h0  # 1/H0 in Gyr (H0 in km/s/Mpc)
        z = np.asarray(z, np.float64)
        return 2 * hubble_gyr / (3 * np.sqrt(omega_l)) * np.arcsinh(np.sqrt(omega_l / self.omega_m) * (1 + z) ** -1.5)


def template_maggies(templates: Templates, filters: tuple[Filter, ...], z: np.ndarray, cosmo: Cosmology) -> np.ndarray:
    """Maggies of one M☉-formed unit of each template seen at redshift z: (n,) -> (n, T, F)."""
    z = np.atleast_1d(np.asarray(z, np.float64))
    dim = (10 * PC_IN_MPC / cosmo.luminosity_mpc(z)) ** 2 / (1 + z)  # (n,)
    out = np.empty((z.size, len(templates.flux), len(filters)))
    for j, filt in enumerate(filters):
        rest = filt.wave[None, :] / (1 + z[:, None])  # (n, m)
        flux = templates.rest_flux(rest) * dim[None, :, None]  # (T, n, m)
        out[:, :, j] = filt.maggies(filt.wave, flux).T
    return out
