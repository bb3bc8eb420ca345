"""DESI-like spectra: redshifted template mixtures on the 7781-bin grid with realistic noise.

Fluxes are in the DESI unit of 1e-17 erg/s/cm²/Å. The per-pixel noise follows the shape of
a DESI coadd's error spectrum: a rise at the blue end (throughput) and at the red end
(detector QE), and spikes at the bright night-sky lines.
"""

from __future__ import annotations

import numpy as np

from galclip.data.mock.sed import PC_IN_MPC, Cosmology, Templates

DESI_FLUX_UNIT = 1e-17

# bright night-sky emission lines in the DESI range (Å, vacuum-ish; O I, Na D, OH bands)
SKY_LINES = np.array(
    [
        5578.9,
        5891.6,
        5897.6,
        6302.0,
        6365.5,
        6865.9,
        7278.4,
        7318.3,
        7342.9,
        7752.8,
        7796.2,
        7823.6,
        7916.0,
        7995.6,
        8346.9,
        8401.6,
        8432.5,
        8763.8,
        8770.4,
        8829.5,
        8888.2,
        8922.1,
        8960.5,
        9378.5,
        9442.3,
        9795.6,
    ]
)


def observed_flux(
    coeffs: np.ndarray, z: np.ndarray, wave: np.ndarray, templates: Templates, cosmo: Cosmology
) -> np.ndarray:
    """f_λ in erg/s/cm²/Å seen at redshift z: coeffs (B, T) M☉ formed, z (B,), wave (L,) -> (B, L).

    f_obs(λ) = Σ_t c_t F_t(λ / (1+z)) · (10 pc / D_L)² / (1+z), F_t at 10 pc per M☉ formed.
    """
    rest = wave[None, :] / (1 + z[:, None])
    dim = (10 * PC_IN_MPC / cosmo.luminosity_mpc(z)) ** 2 / (1 + z)
    flux = np.einsum("tbl,bt->bl", templates.rest_flux(rest), coeffs)
    return flux * dim[:, None]


def noise_sigma(wave: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Per-pixel σ (1e-17 units) for exposure depths (B,) on grid (L,) -> (B, L)."""
    shape = 1.0 + 2.5 * np.exp(-(wave - 3600.0) / 250.0) + 0.8 * np.exp((wave - 9824.0) / 400.0)
    sky = np.exp(-0.5 * ((wave[:, None] - SKY_LINES[None, :]) / 1.2) ** 2).sum(1) * 4.0
    return (0.35 * (shape + sky))[None, :] / depth[:, None]
