"""Rare classes planted into the mock survey at given rates, for a discovery benchmark.

* **lenses**: a strong-lens arc system around the galaxy: a singular isothermal ellipsoid ('SIE', plus a weak
  external shear) centred on it, with Einstein radius θ_E ~ U(1.2, 3.0)″, lensing a blue star-forming 'SERSIC_ELLIPSE'
  source (unlensed r ~ U(22, 23.5) AB, g-r and r-z ~ U(0.2, 0.5)) 0.05-0.4 θ_E off the lens centre, so arcs
  and rings form. Rendered by lenstronomy (ImageData, LensModel, LightModel, ImageModel with supersampling 2) and
  convolved by lenstronomy with a pixel PSF: the mock's own Moffat seeing (``imaging.moffat_kernels``) per band.
  The arcs are added to the noisy cutout (its sky noise is already there), in nanomaggies per 0.262″ pixel.
* **agn**: a broad-line AGN in the spectrum: broad Hα, Hβ, Hγ and MgII (FWHM ~ U(3000, 6000) km/s,
  Hα/Hβ ~ U(2.8, 3.2)) on a power-law continuum f_λ ∝ λ_rest^-1.5, scaled to the galaxy's own spectrum: the broad Hα
  has a rest-frame equivalent width of U(100, 300) Å against the host continuum, and the power law is 15-40% of the
  host continuum at rest 5100 Å. In galclip's spectrum units, 1e-17 erg/s/cm²/Å.

``galclip mock --plant lenses=0.01,agn=0.01`` (``MockConfig.plant``) plants them; ``planted.csv`` beside the survey
records which galaxies hold what (``galclip.data.mock.survey``).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from galclip.data.layout import PIXEL_SCALE_ARCSEC
from galclip.data.mock import imaging
from galclip.data.mock.photometry import NANOMAGGY_ZERO_POINT
from galclip.errors import InputError

logger = logging.getLogger(__name__)

PLANT_CLASSES = ("lenses", "agn")
MAX_RATE = 0.5
LENSTRONOMY_PIN = "lenstronomy==1.14.2"

THETA_E_RANGE = (1.2, 3.0)  # Einstein radius, arcsec
SOURCE_MAG_R_RANGE = (22.0, 23.5)  # unlensed source, r AB
SOURCE_COLOUR_RANGE = (0.2, 0.5)  # g-r and r-z of the source
SOURCE_OFFSET = (0.05, 0.4)  # source offset from the lens centre, in θ_E (uniform in area between the two)
PSF_KERNEL_PX = 41  # odd side of the pixel PSF handed to lenstronomy (±5.2″: > 99.5% of the Moffat light)

C_KMS = 299792.458
# broad lines, rest vacuum Å, with their flux relative to broad Hβ (Hα from the Balmer decrement drawn per AGN)
HALPHA, HBETA, HGAMMA, MGII = 6564.6, 4862.7, 4341.7, 2799.0
HGAMMA_OVER_HBETA = 0.46  # case B
MGII_OVER_HBETA_RANGE = (1.2, 2.0)  # quasar composites (Vanden Berk et al. 2001): ~1.7
FWHM_KMS_RANGE = (3000.0, 6000.0)
BALMER_DECREMENT_RANGE = (2.8, 3.2)  # broad Hα/Hβ
HALPHA_EW_RANGE = (100.0, 300.0)  # rest-frame Å against the host continuum
POWER_LAW_FRACTION_RANGE = (0.15, 0.4)  # power law / host continuum at rest 5100 Å
POWER_LAW_SLOPE = -1.5  # f_λ ∝ λ_rest^slope


def parse_plant(text: str) -> dict[str, float]:
    """``--plant`` text, "lenses=0.01,agn=0.01" -> {"lenses": 0.01, "agn": 0.01} (classes in the order given).

    Refused with an :class:`InputError` naming ``--plant``, the item and the fix: empty text or item, an unknown
    class, a rate that is not a number in (0, 0.5], a class given twice."""
    example = "e.g. --plant lenses=0.01,agn=0.01"
    if not text or not text.strip():
        raise InputError(f"--plant: empty; give CLASS=RATE[,CLASS=RATE] with CLASS one of {_known()}, {example}")
    rates: dict[str, float] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise InputError(f"--plant {text!r}: an empty item; separate CLASS=RATE items by single commas, {example}")
        name, eq, value = (part.strip() for part in item.partition("="))
        if not eq:
            raise InputError(f"--plant {item!r}: no rate; give CLASS=RATE, {example}")
        name = name.lower()
        if name not in PLANT_CLASSES:
            raise InputError(f"--plant {item!r}: unknown class {name!r}; the known ones are {_known()}")
        try:
            rate = float(value)
        except ValueError:
            rate = None
        if rate is None or not 0.0 < rate <= MAX_RATE:
            what = "is not a number" if rate is None else "is not in (0, 0.5]"
            raise InputError(
                f"--plant {item!r}: the rate {value!r} {what}; give the share of galaxies to plant, a number in "
                f"(0, {MAX_RATE}] (e.g. {name}=0.01)"
            )
        if name in rates:
            raise InputError(f"--plant {item!r}: {name} is given twice; give each class once")
        rates[name] = rate
    return rates


def _known() -> str:
    return ", ".join(PLANT_CLASSES)


def plant_counts(n: int, rates: dict[str, float]) -> dict[str, int]:
    """Galaxies planted per class in a mock of ``n``: rate·n rounded half up, at least 1 when rate > 0."""
    counts = {}
    for name, rate in rates.items():
        if name not in PLANT_CLASSES:
            raise InputError(f"--plant {name}: unknown class; the known ones are {_known()}")
        k = int(np.floor(rate * n + 0.5 + 1e-9))
        counts[name] = max(k, 1) if rate > 0 else 0
    if sum(counts.values()) > n:
        raise InputError(
            f"--plant: {sum(counts.values())} planted galaxies ({', '.join(f'{k}={v}' for k, v in counts.items())}) "
            f"in a mock of {n}; lower the rates or make more pairs"
        )
    return counts


def choose_planted(rng: np.random.Generator, n: int, rates: dict[str, float]) -> dict[str, np.ndarray]:
    """Which of ``n`` galaxies get each class: {class: (n,) bool}, disjoint, chosen at random, each with
    :func:`plant_counts` galaxies. The classes take consecutive slices of one permutation in ``PLANT_CLASSES``
    order, so the choice does not depend on the order ``rates`` lists them in."""
    counts = plant_counts(n, rates)
    order = rng.permutation(n)
    masks, start = {}, 0
    for name in PLANT_CLASSES:
        if name not in counts:
            continue
        mask = np.zeros(n, bool)
        mask[order[start : start + counts[name]]] = True
        start += counts[name]
        masks[name] = mask
    return masks


def require_lenstronomy() -> None:
    """Refuse, with the install command, when lenstronomy (needed to plant lenses) cannot be imported."""
    _lenstronomy()


def _lenstronomy() -> tuple:
    try:
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
        from lenstronomy.Util.param_util import phi_q2_ellipticity, shear_polar2cartesian
        from lenstronomy.Util.simulation_util import data_configure_simple
    except ImportError as exc:
        raise InputError(f"--plant lenses needs lenstronomy: pip install --no-deps {LENSTRONOMY_PIN}") from exc
    return (
        ImageData,
        PSF,
        ImageModel,
        LensModel,
        LightModel,
        phi_q2_ellipticity,
        shear_polar2cartesian,
        data_configure_simple,
    )


def lens_arcs(
    rng: np.random.Generator,
    seeing_fwhm_arcsec: np.ndarray,
    size: int = 152,
    centre_px: np.ndarray | None = None,
    axis_ratio: np.ndarray | None = None,
    position_angle: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Lensed-source images of ``m`` strong lenses: (m, 3, size, size) float32 g, r, z nanomaggies per pixel, and
    their truth {name: (m,)}: theta_e_arcsec, source_offset_arcsec (from the lens centre), source_mag_r (unlensed,
    AB), magnification (lensed / unlensed flux), arc_mag_r (the arcs' total r, AB).

    ``seeing_fwhm_arcsec`` (m,) is each cutout's r-band Moffat FWHM (``imaging.SEEING_BAND_FACTOR`` per band). The
    lens sits at ``centre_px`` (m, 2) (x = column, y = row; default the stamp centre); its mass follows the galaxy's
    light, ``axis_ratio`` (m,) (rounder, q >= 0.6) and ``position_angle`` (m,) radians from +x, when given, else a
    random modest ellipticity. Everything random comes from ``rng``, drawn for all lenses before any is rendered."""
    ImageData, PSF, ImageModel, LensModel, LightModel, phi_q2_ellipticity, shear_polar2cartesian, configure = (
        _lenstronomy()
    )
    seeing = np.asarray(seeing_fwhm_arcsec, np.float64)
    m = len(seeing)
    theta_e = rng.uniform(*THETA_E_RANGE, m)
    q_mass = rng.uniform(0.65, 1.0, m) if axis_ratio is None else np.clip(axis_ratio + rng.normal(0, 0.05, m), 0.6, 1)
    jitter = rng.normal(0, 0.15, m)
    phi_mass = rng.uniform(0, np.pi, m) if position_angle is None else np.asarray(position_angle) + jitter
    gamma, phi_gamma = rng.uniform(0, 0.05, m), rng.uniform(0, np.pi, m)
    lo, hi = SOURCE_OFFSET
    beta = theta_e * np.sqrt(rng.uniform(lo**2, hi**2, m))
    beta_angle = rng.uniform(0, 2 * np.pi, m)
    r_src, n_src = rng.uniform(0.1, 0.4, m), rng.uniform(0.8, 2.0, m)
    q_src, phi_src = rng.uniform(0.4, 1.0, m), rng.uniform(0, np.pi, m)
    mag_r = rng.uniform(*SOURCE_MAG_R_RANGE, m)
    g_r, r_z = rng.uniform(*SOURCE_COLOUR_RANGE, m), rng.uniform(*SOURCE_COLOUR_RANGE, m)
    source_nmgy = 10 ** (-0.4 * (np.stack([mag_r + g_r, mag_r, mag_r - r_z], axis=1) - NANOMAGGY_ZERO_POINT))

    data = ImageData(**configure(size, PIXEL_SCALE_ARCSEC))
    centre = np.full((m, 2), (size - 1) / 2) if centre_px is None else np.asarray(centre_px, np.float64)
    fwhm_px = seeing[:, None] * imaging.SEEING_BAND_FACTOR[None, :] / PIXEL_SCALE_ARCSEC  # (m, 3)
    kernels = np.fft.fftshift(imaging.moffat_kernels(fwhm_px.ravel(), PSF_KERNEL_PX), axes=(1, 2))
    kernels = kernels.reshape(m, 3, PSF_KERNEL_PX, PSF_KERNEL_PX).astype(np.float64)
    lens_model, light_model = LensModel(["SIE", "SHEAR"]), LightModel(["SERSIC_ELLIPSE"])
    numerics = {"supersampling_factor": 2}
    arcs = np.zeros((m, 3, size, size), np.float32)
    with warnings.catch_warnings():  # lenstronomy 1.14's FFT calls numpy 2 deprecates (harmless)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lenstronomy\.")
        for i in range(m):
            x0, y0 = data.map_pix2coord(centre[i, 0], centre[i, 1])
            e1, e2 = phi_q2_ellipticity(phi_mass[i], q_mass[i])
            g1, g2 = shear_polar2cartesian(phi_gamma[i], gamma[i])
            kwargs_lens = [
                {"theta_E": theta_e[i], "e1": e1, "e2": e2, "center_x": x0, "center_y": y0},
                {"gamma1": g1, "gamma2": g2, "ra_0": x0, "dec_0": y0},
            ]
            se1, se2 = phi_q2_ellipticity(phi_src[i], q_src[i])
            kwargs_source = [
                {
                    "amp": 1.0,
                    "R_sersic": r_src[i],
                    "n_sersic": n_src[i],
                    "e1": se1,
                    "e2": se2,
                    "center_x": x0 + beta[i] * np.cos(beta_angle[i]),
                    "center_y": y0 + beta[i] * np.sin(beta_angle[i]),
                }
            ]
            unit = light_model.total_flux(kwargs_source)[0]  # unlensed flux of amp = 1, in the image's units
            for band in range(3):
                psf = PSF(psf_type="PIXEL", kernel_point_source=kernels[i, band])
                model = ImageModel(data, psf, lens_model, light_model, kwargs_numerics=numerics)
                arcs[i, band] = model.image(kwargs_lens, kwargs_source) * (source_nmgy[i, band] / unit)
    lensed_r = arcs[:, 1].sum(axis=(1, 2), dtype=np.float64)
    truth = {
        "theta_e_arcsec": theta_e,
        "source_offset_arcsec": beta,
        "source_mag_r": mag_r,
        "magnification": lensed_r / source_nmgy[:, 1],
        "arc_mag_r": NANOMAGGY_ZERO_POINT - 2.5 * np.log10(np.maximum(lensed_r, 1e-30)),
    }
    return arcs, truth


def _continuum(host: np.ndarray, wave: np.ndarray, rest: float, one_z: np.ndarray) -> np.ndarray:
    """Host continuum (m,) at rest wavelength ``rest`` Å of spectra at redshifts ``one_z`` - 1 (m,): the median of
    the host over 60-200 Å (rest) either side (a line there left out); the median of the reddest 300 Å where that
    window is off the grid."""
    out = np.empty(len(host))
    red = wave > wave[-1] - 300
    for i in range(len(host)):
        d = np.abs(wave / one_z[i] - rest)
        window = (d > 60) & (d < 200)
        out[i] = np.median(host[i, window]) if window.sum() >= 20 else np.median(host[i, red])
    floor = 1e-3 * np.median(np.abs(host), axis=1) + 1e-6
    return np.maximum(out, floor)


def agn_component(rng: np.random.Generator, z: np.ndarray, wave: np.ndarray, host: np.ndarray) -> np.ndarray:
    """The broad-line AGN to add to ``m`` spectra: (m, n_bins) float32, 1e-17 erg/s/cm²/Å.

    ``z`` (m,) redshifts, ``wave`` (n_bins,) observed Å (``desi_wavelength()``), ``host`` (m, n_bins) the galaxies'
    own (noiseless) spectra, which set the scale: broad Hα of rest equivalent width U(100, 300) Å against the host
    continuum beside it, Hβ = Hα / U(2.8, 3.2), Hγ = 0.46 Hβ, MgII = U(1.2, 2.0) Hβ (lines off the grid simply do not
    show), all Gaussian with one FWHM ~ U(3000, 6000) km/s; plus a power law f_λ ∝ λ_rest^-1.5 that is U(0.15, 0.4) of
    the host continuum at rest 5100 Å."""
    z = np.asarray(z, np.float64)
    wave = np.asarray(wave, np.float64)
    host = np.asarray(host, np.float64)
    m = len(z)
    fwhm = rng.uniform(*FWHM_KMS_RANGE, m)
    ew_ha = rng.uniform(*HALPHA_EW_RANGE, m)
    decrement = rng.uniform(*BALMER_DECREMENT_RANGE, m)
    mgii_ratio = rng.uniform(*MGII_OVER_HBETA_RANGE, m)
    pl_fraction = rng.uniform(*POWER_LAW_FRACTION_RANGE, m)

    one_z = 1 + z
    pl_norm = pl_fraction * _continuum(host, wave, 5100.0, one_z)
    out = pl_norm[:, None] * (wave[None, :] / (5100.0 * one_z[:, None])) ** POWER_LAW_SLOPE
    f_ha = ew_ha * one_z * _continuum(host, wave, HALPHA, one_z)  # observed EW = (1+z) rest EW
    f_hb = f_ha / decrement
    for rest, flux in ((HALPHA, f_ha), (HBETA, f_hb), (HGAMMA, HGAMMA_OVER_HBETA * f_hb), (MGII, mgii_ratio * f_hb)):
        centre = rest * one_z
        sigma = centre * fwhm / (2 * np.sqrt(2 * np.log(2)) * C_KMS)
        u = (wave[None, :] - centre[:, None]) / sigma[:, None]
        out += (flux / (np.sqrt(2 * np.pi) * sigma))[:, None] * np.exp(-0.5 * u * u)
    return out.astype(np.float32)
