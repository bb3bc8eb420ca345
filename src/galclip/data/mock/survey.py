"""Write a mock survey in the AstroCLIP HDF5 layout plus a PROVABGS-layout catalogue.

``generate_mock`` streams batches of galaxies drawn from the fitted SDSS population
(``population``) into ``survey.h5`` (groups "0".."9") and writes ``provabgs.h5``. The
catalogue's PROVABGS labels are the truth used to make each galaxy (``population.stellar_properties``);
its photometry is measured, as a Tractor catalogue's is: FLUX_G/R/Z with their FLUX_IVAR at each
galaxy's depth, and MAG_G/R/Z from them (``photometry``). Each galaxy has a position, uniform on a
sky patch (``SKY_PATCH``), in the catalogue (RA, DEC) and in the survey groups ('ra', 'dec'). With
``modality="image"`` the groups hold only images, positions and targetids (galaxies nobody has a
spectrum of, to predict); with "spectrum", only spectra, redshifts, positions and targetids.

Random streams: batch ``lo`` draws its pixels from ``default_rng([seed, lo])`` (unchanged by the catalogue
quantities) and its photometric noise from ``default_rng([seed, lo, 1])``; the catalogue-only galaxies come from
``default_rng([seed, 0, 2])`` and the sky positions of all galaxies from ``default_rng([seed, 0, 3])``.

Planted classes (``MockConfig.plant``, :mod:`galclip.data.mock.plant`): which galaxies get a lens arc or a broad-line
AGN is drawn once from ``default_rng([seed, 0, 7])``, and what batch ``lo`` adds to them from
``default_rng([seed, lo, 7])``, after the batch is drawn; so every other galaxy is bit for bit what the same mock
without planting holds. ``planted.csv`` records them.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from galclip.atomic import atomic_path, reserve_space
from galclip.config import MockConfig
from galclip.data.layout import DESI_N_BINS, IMAGE_SHAPE, PIXEL_SCALE_ARCSEC, desi_wavelength
from galclip.data.mock import imaging, photometry, spectroscopy
from galclip.data.mock.plant import PLANT_CLASSES, agn_component, choose_planted, lens_arcs, require_lenstronomy
from galclip.data.mock.population import Population, build_population, stellar_properties
from galclip.data.mock.sed import DECAM_GRZ, Cosmology, load_filter, load_templates, template_maggies
from galclip.errors import InputError

logger = logging.getLogger(__name__)

SURVEY_FILE = "survey.h5"
CATALOGUE_FILE = "provabgs.h5"
PLANTED_FILE = "planted.csv"  # only with MockConfig.plant: targetid,class,theta_e_arcsec per planted galaxy
TARGETID_BASE = 39627000000000000  # DESI-like targetid range
FIBRE_RADIUS_ARCSEC = 0.75
STAMP = IMAGE_SHAPE[0]
# (RA min, RA max, Dec min, Dec max) degrees: 297 deg² of the DESI footprint in Legacy Surveys DR9 south (NGC)
SKY_PATCH = (150.0, 170.0, 0.0, 15.0)
MIN_SEPARATION_ARCSEC = 5.0  # no two mock galaxies closer (each cutout shows one galaxy, no blends)
BANDS = ("G", "R", "Z")


@dataclass
class MockGalaxies:
    """Catalogue-level quantities of mock galaxies, (B,) or (B, 3) for g, r, z: the truth and what a Tractor +
    PROVABGS row holds (see :meth:`catalogue_columns`)."""

    z: np.ndarray
    log_mstar: np.ndarray
    coeffs: np.ndarray  # (B, T) M☉ formed per template
    z_mw: np.ndarray  # mass-weighted metallicity (mass fraction)
    tage_mw: np.ndarray  # mass-weighted age, Gyr
    avg_sfr_1gyr: np.ndarray  # M☉/yr over the last Gyr
    ra: np.ndarray  # degrees
    dec: np.ndarray
    band_maggies: np.ndarray  # (B, 3) true total g, r, z maggies (noiseless)
    flux: np.ndarray  # (B, 3) measured nanomaggies, with the photometric noise
    flux_ivar: np.ndarray  # (B, 3) 1/σ² nanomaggies⁻²
    psf_depth: np.ndarray  # (B, 3) 5σ point-source depth, AB
    r_e_arcsec: np.ndarray
    sersic_n: np.ndarray
    seeing_fwhm_arcsec: np.ndarray  # r band; imaging.SEEING_BAND_FACTOR per band

    @property
    def mag(self) -> np.ndarray:
        """(B, 3) measured AB magnitudes, NaN where the measured flux is ≤ 0."""
        return photometry.magnitudes(self.flux)

    @property
    def mag_true(self) -> np.ndarray:
        """(B, 3) noiseless AB magnitudes."""
        return photometry.magnitudes(self.band_maggies * 1e9)

    def catalogue_columns(self) -> dict[str, np.ndarray]:
        """The PROVABGS-VAC columns of these galaxies (no TARGETID), float64."""
        cols = {
            "RA": self.ra,
            "DEC": self.dec,
            "Z_HP": self.z,
            "PROVABGS_LOGMSTAR_BF": self.log_mstar,
            "PROVABGS_Z_MW": self.z_mw,
            "PROVABGS_TAGE_MW": self.tage_mw,
            "PROVABGS_AVGSFR_1GYR": self.avg_sfr_1gyr,
        }
        mag = self.mag
        for j, band in enumerate(BANDS):
            cols[f"MAG_{band}"] = mag[:, j]
        for j, band in enumerate(BANDS):
            cols[f"FLUX_{band}"] = self.flux[:, j]
            cols[f"FLUX_IVAR_{band}"] = self.flux_ivar[:, j]
        return {k: np.asarray(v, np.float64) for k, v in cols.items()}


# provabgs.h5 columns, in the order written
CATALOGUE_NAMES = (
    "TARGETID",
    "RA",
    "DEC",
    "Z_HP",
    "PROVABGS_LOGMSTAR_BF",
    "PROVABGS_Z_MW",
    "PROVABGS_TAGE_MW",
    "PROVABGS_AVGSFR_1GYR",
    *(f"MAG_{b}" for b in BANDS),
    *(f"{kind}_{b}" for b in BANDS for kind in ("FLUX", "FLUX_IVAR")),
)


@dataclass
class MockBatch(MockGalaxies):
    """One batch of mock galaxies with pixels; ``image`` is (B, 3, 152, 152) g,r,z nanomaggies per pixel."""

    image: np.ndarray
    image_noiseless: np.ndarray
    spectrum: np.ndarray  # (B, 7781) 1e-17 erg/s/cm²/Å, with noise
    spectrum_noiseless: np.ndarray
    fibre_fraction: np.ndarray
    sky_sigma: np.ndarray  # (B, 3) per-pixel noise of the image, nanomaggies
    centre_px: np.ndarray | None = None  # (B, 2) x (column), y (row) of the galaxy's centre, pixels
    axis_ratio: np.ndarray | None = None  # (B,) b/a of its light
    position_angle: np.ndarray | None = None  # (B,) radians from +x towards +y


def draw_sky_positions(
    rng: np.random.Generator,
    n: int,
    patch: tuple[float, float, float, float] = SKY_PATCH,
    min_separation_arcsec: float = MIN_SEPARATION_ARCSEC,
) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) (n,) degrees uniform on the sphere within ``patch``, no two closer than ``min_separation_arcsec``
    (the later of a close pair is drawn again).

    Uniform points rarely come that close: N galaxies over A deg² hold about N²·π r² / (2A) pairs within r, i.e.
    0.2 pairs within 5″ for 4,000 galaxies on 297 deg², but ~100 for 100,000, so the check matters only for big mocks.
    """
    ra_lo, ra_hi, dec_lo, dec_hi = patch
    sin_lo, sin_hi = np.sin(np.radians(dec_lo)), np.sin(np.radians(dec_hi))

    def uniform(m: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.uniform(ra_lo, ra_hi, m), np.degrees(np.arcsin(rng.uniform(sin_lo, sin_hi, m)))

    ra, dec = uniform(n)
    if n < 2 or min_separation_arcsec <= 0:
        return ra, dec
    from scipy.spatial import cKDTree

    chord = 2 * np.sin(np.radians(min_separation_arcsec / 3600) / 2)
    for _ in range(100):
        r, d = np.radians(ra), np.radians(dec)
        xyz = np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)
        pairs = cKDTree(xyz).query_pairs(chord, output_type="ndarray")
        if not len(pairs):
            return ra, dec
        again = np.unique(pairs.max(axis=1))
        ra[again], dec[again] = uniform(len(again))
    raise RuntimeError(f"could not place {n} galaxies {min_separation_arcsec}″ apart on the patch {patch}")


class MockGenerator:
    """Draws galaxies from the population and renders their image and spectrum."""

    def __init__(self, config: MockConfig):
        self.config = config
        self.population: Population = build_population(config.redshift_stretch, config.z_max)
        self.templates = load_templates()
        self.cosmo = Cosmology()
        self.filters = tuple(load_filter(f) for f in DECAM_GRZ)
        self.wave = desi_wavelength()

    def _intrinsic(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """Population member, redshift, coefficients, log M*, lateness, Sérsic index and log R_e (kpc)."""
        pop = self.population
        pick = rng.integers(0, len(pop.z), n)
        z = np.clip(pop.z[pick] * (1 + rng.normal(0, 0.03, n)), 0.01, self.config.z_max)
        coeffs = pop.coeffs[pick] * 10 ** rng.normal(0, 0.05, n)[:, None]
        log_mstar = np.log10(coeffs @ self.templates.mremain)
        lateness = 1.0 / (1.0 + np.exp(-(np.log10(pop.young_fraction[pick] + 1e-12) + 7.0) / 0.7))
        sersic_n = np.clip(4.0 - 3.0 * lateness + rng.normal(0, 0.3, n), 0.7, 5.0)
        dm = log_mstar - 10.7
        log_re = (1 - lateness) * (0.60 + 0.75 * dm) + lateness * (0.86 + 0.25 * dm) + rng.normal(0, 0.15, n)
        return z, coeffs, log_mstar, lateness, sersic_n, log_re

    def _catalogue(
        self,
        aux: np.random.Generator,
        z: np.ndarray,
        coeffs: np.ndarray,
        maggies: np.ndarray,
        re_arcsec: np.ndarray,
        sersic_n: np.ndarray,
        seeing: np.ndarray,
        sky: np.ndarray,
        positions: tuple[np.ndarray, np.ndarray] | None,
    ) -> dict:
        """The catalogue quantities (MockGalaxies fields) of galaxies already drawn; noise and positions from aux."""
        props = stellar_properties(coeffs, z, self.templates, self.cosmo)
        depth = photometry.psf_depth(sky, seeing)
        sigma = photometry.flux_sigma(depth, photometry.extent_factor(re_arcsec, seeing))
        flux, ivar = photometry.observe(aux, maggies * 1e9, sigma)
        ra, dec = positions if positions is not None else draw_sky_positions(aux, len(z))
        return dict(
            z=z,
            log_mstar=props.log_mstar,
            coeffs=coeffs,
            z_mw=props.z_mw,
            tage_mw=props.tage_mw,
            avg_sfr_1gyr=props.avg_sfr_1gyr,
            ra=np.asarray(ra, np.float64),
            dec=np.asarray(dec, np.float64),
            band_maggies=maggies,
            flux=flux,
            flux_ivar=ivar,
            psf_depth=depth,
            r_e_arcsec=re_arcsec,
            sersic_n=sersic_n,
            seeing_fwhm_arcsec=seeing,
        )

    def _band_maggies(self, coeffs: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.einsum("nt,ntf->nf", coeffs, template_maggies(self.templates, self.filters, z, self.cosmo))

    def _re_arcsec(self, log_re: np.ndarray, z: np.ndarray) -> np.ndarray:
        return 10**log_re / (self.cosmo.angular_mpc(z) * 1e3) * 206264.8

    def draw(
        self,
        rng: np.random.Generator,
        n: int,
        aux_rng: np.random.Generator | None = None,
        positions: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> MockBatch:
        """``n`` galaxies with image and spectrum. ``rng`` draws everything the pixels depend on, in the same order
        as before the catalogue quantities existed; ``aux_rng`` the photometric noise and then, unless ``positions``
        (ra, dec) are given, the sky positions (default: a generator spawned from ``rng``, whose stream it leaves
        as it is)."""
        aux = aux_rng if aux_rng is not None else rng.spawn(1)[0]
        z, coeffs, log_mstar, lateness, sersic_n, log_re = self._intrinsic(rng, n)
        re_arcsec = self._re_arcsec(log_re, z)
        re_px = np.clip(re_arcsec / PIXEL_SCALE_ARCSEC, 0.3, 60.0)
        axis_ratio = rng.uniform(0.25 + 0.45 * (1 - lateness), 1.0)
        pa = rng.uniform(0, np.pi, n)
        centre = (STAMP - 1) / 2 + rng.uniform(-0.5, 0.5, (n, 2))
        profile = imaging.sersic_profiles(sersic_n, re_px, axis_ratio, pa, centre, STAMP)

        maggies = self._band_maggies(coeffs, z)
        seeing = rng.uniform(*photometry.SEEING_FWHM_RANGE, n)
        clean = np.empty((n, 3, STAMP, STAMP), np.float32)
        for band in range(3):
            psf = imaging.moffat_kernels(seeing * imaging.SEEING_BAND_FACTOR[band] / PIXEL_SCALE_ARCSEC, STAMP)
            clean[:, band] = imaging.convolve(profile * (maggies[:, band] * 1e9)[:, None, None].astype(np.float32), psf)
        sky = imaging.draw_sky_noise(rng, n).astype(np.float32)
        image = clean + rng.standard_normal(clean.shape, dtype=np.float32) * sky[:, :, None, None]

        fibre = imaging.fibre_fraction(clean[:, 1], centre, FIBRE_RADIUS_ARCSEC / PIXEL_SCALE_ARCSEC)
        spec_clean = spectroscopy.observed_flux(coeffs, z, self.wave, self.templates, self.cosmo)
        spec_clean = (spec_clean * fibre[:, None] / spectroscopy.DESI_FLUX_UNIT).astype(np.float32)
        depth = rng.lognormal(np.log(0.8), 0.3, n)
        sigma = spectroscopy.noise_sigma(self.wave, depth).astype(np.float32)
        spectrum = spec_clean + rng.standard_normal(spec_clean.shape, dtype=np.float32) * sigma
        cat = self._catalogue(aux, z, coeffs, maggies, re_arcsec, sersic_n, seeing, sky, positions)
        return MockBatch(
            **cat,
            image=image,
            image_noiseless=clean,
            spectrum=spectrum,
            spectrum_noiseless=spec_clean,
            fibre_fraction=fibre,
            sky_sigma=sky,
            centre_px=centre,
            axis_ratio=axis_ratio,
            position_angle=pa,
        )

    def draw_catalogue(
        self, rng: np.random.Generator, n: int, positions: tuple[np.ndarray, np.ndarray] | None = None
    ) -> MockGalaxies:
        """``n`` galaxies without pixels (catalogue rows with no image-spectrum pair), from the same population,
        sizes, seeing and sky-noise distributions as :meth:`draw`, all from ``rng``."""
        z, coeffs, _, _, sersic_n, log_re = self._intrinsic(rng, n)
        seeing = rng.uniform(*photometry.SEEING_FWHM_RANGE, n)
        sky = imaging.draw_sky_noise(rng, n)
        cat = self._catalogue(
            rng, z, coeffs, self._band_maggies(coeffs, z), self._re_arcsec(log_re, z), sersic_n, seeing, sky, positions
        )
        return MockGalaxies(**cat)


def _unique_targetids(rng: np.random.Generator, n: int) -> np.ndarray:
    ids = np.unique(rng.integers(0, 1 << 40, n + n // 10 + 16))
    while ids.size < n:
        ids = np.unique(np.concatenate([ids, rng.integers(0, 1 << 40, n)]))
    return TARGETID_BASE + rng.permutation(ids)[:n]


MOCK_NAMES = (SURVEY_FILE, CATALOGUE_FILE, PLANTED_FILE)


def generate_mock(
    config: MockConfig,
    out_dir: str | Path,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write ``survey.h5`` and ``provabgs.h5`` (and, with ``config.plant``, ``planted.csv``) into ``out_dir``;
    returns a summary dict.

    Stores are built from survey files, so existing ones (a user's, or an earlier mock's) are replaced only with
    ``overwrite``, as is a ``planted.csv`` (with ``overwrite`` and no planting, an old one is removed: it would not
    describe the new survey); a folder that is new or empty is marked as the mock's (``galclip.outputs``)."""
    from galclip.outputs import MARKER, owner, remove_if_unused, write_marker

    out = Path(out_dir)
    if config.pairs < 1:
        raise ValueError("pairs must be >= 1")
    needs = {"lenses": ("both", "image"), "agn": ("both", "spectrum")}
    for name, _ in config.plant:
        if config.modality not in needs[name]:
            raise InputError(
                f"--plant {name}: a mock with --modality {config.modality} has no "
                f"{'images' if name == 'lenses' else 'spectra'} to plant {name} in; leave out --modality or {name}"
            )
    if "lenses" in dict(config.plant):
        require_lenstronomy()  # before anything is written
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; --out is the folder to write survey.h5 and provabgs.h5 into")
    existing = [out / name for name in MOCK_NAMES if (out / name).exists()]
    if existing and not overwrite:
        raise InputError(
            f"{existing[0]}: already exists{' (an earlier galclip mock)' if owner(out) == 'mock' else ''}; "
            "feature stores extracted from it would no longer match it. Choose another --out, or pass "
            "--overwrite to replace it"
        )
    created = not out.exists()
    fresh = created or owner(out) == "mock" or not any(e.name != MARKER for e in out.iterdir())
    out.mkdir(parents=True, exist_ok=True)
    try:
        if fresh:
            write_marker(out, "mock")
        summary = _generate(config, out, progress)
    except BaseException:
        if created:
            remove_if_unused(out)
        raise
    if not config.plant and (out / PLANTED_FILE).exists():  # overwrite: the old truth does not describe this survey
        (out / PLANTED_FILE).unlink()
        logger.info("removed %s: an earlier mock's planted galaxies, not in the new survey", out / PLANTED_FILE)
    return summary


def _generate(config: MockConfig, out: Path, progress: Callable[[int], None] | None) -> dict:
    t0 = time.perf_counter()
    gen = MockGenerator(config)
    rng = np.random.default_rng(config.seed)
    n = config.pairs
    targetid = _unique_targetids(rng, n)
    n_groups = max(1, min(config.n_groups, n))
    bounds = np.linspace(0, n, n_groups + 1).astype(int)
    n_extra = max(1, n // 20)  # catalogue galaxies without an image-spectrum pair
    positions = draw_sky_positions(np.random.default_rng([config.seed, 0, 3]), n + n_extra)

    columns = {k: np.empty(n) for k in CATALOGUE_NAMES[1:]}
    true_mag = np.empty((n, 3))
    per_pair = (
        (np.prod(IMAGE_SHAPE) if config.modality in ("both", "image") else 0) * 4
        + 8 * 3
        + ((DESI_N_BINS + 1) * 4 if config.modality in ("both", "spectrum") else 0)
    )
    planted = choose_planted(np.random.default_rng([config.seed, 0, 7]), n, dict(config.plant)) if config.plant else {}
    truth: dict[str, np.ndarray] = {"theta_e_arcsec": np.full(n, np.nan)}
    with atomic_path(out / SURVEY_FILE) as survey_tmp:
        reserve_space(survey_tmp, int(1.05 * n * per_pair) + 2**20, name=out / SURVEY_FILE)
        _write_survey(survey_tmp, config, gen, targetid, bounds, positions, columns, true_mag, progress, planted, truth)
    extra = gen.draw_catalogue(
        np.random.default_rng([config.seed, 0, 2]), n_extra, (positions[0][n:], positions[1][n:])
    ).catalogue_columns()
    _write_catalogue(out / CATALOGUE_FILE, targetid, columns, extra, config, rng)
    elapsed = time.perf_counter() - t0
    # σ_mag = 2.5 / ln 10 · σ_flux / flux_true: the stated flux error in magnitudes at each galaxy's true brightness
    true_flux = 10 ** (-0.4 * (true_mag - photometry.NANOMAGGY_ZERO_POINT))
    ivar = np.stack([columns[f"FLUX_IVAR_{b}"] for b in BANDS], axis=1)
    sigma_mag = 2.5 / np.log(10) / (np.sqrt(ivar) * true_flux)
    near = np.abs(true_mag[:, 1] - 19.0) < 0.25
    summary = {
        "pairs": n,
        "modality": config.modality,
        "seconds": elapsed,
        "pairs_per_s": n / elapsed,
        "survey": str(out / SURVEY_FILE),
        "catalogue": str(out / CATALOGUE_FILE),
        "sky_patch_deg": list(SKY_PATCH),
        # photometric noise of the catalogue magnitudes: median σ_mag per band, all pairs and those with true r ≈ 19
        # (|r - 19| < 0.25)
        "median_sigma_mag": {b.lower(): float(np.nanmedian(sigma_mag[:, j])) for j, b in enumerate(BANDS)},
        "median_sigma_mag_r19": {
            b.lower(): float(np.nanmedian(sigma_mag[near, j])) if near.any() else None for j, b in enumerate(BANDS)
        },
        # noiseless truth, for checks: median |measured - true| magnitude per band
        "median_abs_mag_error": {
            b.lower(): float(np.nanmedian(np.abs(columns[f"MAG_{b}"] - true_mag[:, j]))) for j, b in enumerate(BANDS)
        },
    }
    if planted:
        _write_planted(out / PLANTED_FILE, targetid, planted, truth)
        summary["planted"] = {name: int(mask.sum()) for name, mask in planted.items()}
        summary["planted_file"] = str(out / PLANTED_FILE)
        logger.info("planted %s -> %s", summary["planted"], out / PLANTED_FILE)
    logger.info("mock survey: %d pairs in %.1f s (%.0f pairs/s) -> %s", n, elapsed, n / elapsed, out)
    return summary


def _write_planted(path: Path, targetid: np.ndarray, planted: dict[str, np.ndarray], truth: dict) -> None:
    """``planted.csv``: one row per planted galaxy, by class (``PLANT_CLASSES`` order) then survey row: targetid,
    class and, for lenses, the Einstein radius in arcsec (empty for the others)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["targetid", "class", "theta_e_arcsec"])
            for name in PLANT_CLASSES:
                for row in np.flatnonzero(planted.get(name, ())):
                    theta = truth["theta_e_arcsec"][row]
                    writer.writerow([int(targetid[row]), name, f"{theta:.4f}" if np.isfinite(theta) else ""])


def _plant(batch: MockBatch, lo: int, seed: int, wave: np.ndarray, planted: dict[str, np.ndarray], truth: dict) -> None:
    """Add the planted classes to the galaxies of ``batch`` (survey rows ``lo``..) that ``planted`` marks, in place
    (noisy and noiseless pixels and spectra), from their own stream ``default_rng([seed, lo, 7])``; ``truth`` gets
    their per-galaxy parameters by survey row."""
    rng = np.random.default_rng([seed, lo, 7])
    n = len(batch.z)
    for name in PLANT_CLASSES:
        if name not in planted:
            continue
        rows = np.flatnonzero(planted[name][lo : lo + n])
        if not rows.size:
            continue
        if name == "lenses":
            arcs, params = lens_arcs(
                rng,
                batch.seeing_fwhm_arcsec[rows],
                STAMP,
                centre_px=batch.centre_px[rows],
                axis_ratio=batch.axis_ratio[rows],
                position_angle=batch.position_angle[rows],
            )
            batch.image[rows] += arcs
            batch.image_noiseless[rows] += arcs
            truth["theta_e_arcsec"][lo + rows] = params["theta_e_arcsec"]
        else:
            agn = agn_component(rng, batch.z[rows], wave, batch.spectrum_noiseless[rows])
            batch.spectrum[rows] += agn
            batch.spectrum_noiseless[rows] += agn


def _write_survey(
    path: Path,
    config: MockConfig,
    gen: MockGenerator,
    targetid: np.ndarray,
    bounds: np.ndarray,
    positions: tuple[np.ndarray, np.ndarray],
    columns: dict,
    true_mag: np.ndarray,
    progress: Callable[[int], None] | None,
    planted: dict[str, np.ndarray] | None = None,
    truth: dict | None = None,
) -> None:
    """Fill the survey HDF5 at ``path`` batch by batch, in AstroCLIP's layout (plus 'ra', 'dec' float64 degrees per
    group, which AstroCLIP's reader ignores); ``columns`` gets each pair's catalogue columns and ``true_mag`` its
    noiseless g, r, z magnitudes. ``planted`` ({class: (n,) bool}) galaxies get their class added (:func:`_plant`),
    their parameters into ``truth``."""
    n, n_groups = len(targetid), len(bounds) - 1
    with h5py.File(path, "w") as f:
        f.attrs["generator"] = "galclip mock"
        f.attrs["config"] = json.dumps(asdict(config))
        groups = []
        for g in range(n_groups):
            m = int(bounds[g + 1] - bounds[g])
            grp = f.create_group(str(g))
            if config.modality in ("both", "image"):
                grp.create_dataset("image", (m, *IMAGE_SHAPE), np.float32, chunks=(min(m, 16), *IMAGE_SHAPE))
            if config.modality in ("both", "spectrum"):
                grp.create_dataset("spectrum", (m, DESI_N_BINS, 1), np.float32, chunks=(min(m, 64), DESI_N_BINS, 1))
                grp.create_dataset("redshift", data=np.zeros(m, np.float32))
            grp.create_dataset("targetid", data=targetid[bounds[g] : bounds[g + 1]])
            grp.create_dataset("ra", data=positions[0][bounds[g] : bounds[g + 1]].astype(np.float64))
            grp.create_dataset("dec", data=positions[1][bounds[g] : bounds[g + 1]].astype(np.float64))
            groups.append(grp)
        for lo in range(0, n, config.batch_size):
            hi = min(lo + config.batch_size, n)
            batch = gen.draw(
                np.random.default_rng([config.seed, lo]),
                hi - lo,
                aux_rng=np.random.default_rng([config.seed, lo, 1]),
                positions=(positions[0][lo:hi], positions[1][lo:hi]),
            )
            if planted:
                _plant(batch, lo, config.seed, gen.wave, planted, truth)
            image_whc = batch.image.transpose(0, 3, 2, 1)  # (B, C, H, W) -> AstroCLIP's (B, W, H, C)
            for name, values in batch.catalogue_columns().items():
                columns[name][lo:hi] = values
            true_mag[lo:hi] = batch.mag_true
            for g in range(n_groups):
                a, b = max(lo, bounds[g]), min(hi, bounds[g + 1])
                if a < b:
                    sl = slice(a - bounds[g], b - bounds[g])
                    if "image" in groups[g]:
                        groups[g]["image"][sl] = image_whc[a - lo : b - lo]
                    if "spectrum" in groups[g]:
                        groups[g]["spectrum"][sl] = batch.spectrum[a - lo : b - lo, :, None]
                        groups[g]["redshift"][sl] = batch.z[a - lo : b - lo].astype(np.float32)
            if progress is not None:
                progress(hi - lo)


def _write_catalogue(
    path: Path, targetid: np.ndarray, columns: dict, extra: dict, config: MockConfig, rng: np.random.Generator
) -> None:
    """PROVABGS-like catalogue: a labelled share of the pairs, a few spurious rows, some extras (galaxies drawn like
    the pairs, with no image-spectrum pair)."""
    n = len(targetid)
    rows = np.flatnonzero(rng.random(n) < config.labelled_fraction)
    cols = {"TARGETID": targetid[rows], **{name: values[rows] for name, values in columns.items()}}
    spurious = rng.random(len(rows)) < 0.02  # failed fits, as in the real VAC (-999): removed by the cuts
    for name in ("PROVABGS_LOGMSTAR_BF", "PROVABGS_Z_MW", "PROVABGS_TAGE_MW", "PROVABGS_AVGSFR_1GYR"):
        cols[name] = np.where(spurious, -999.0, cols[name])
    n_extra = len(extra["Z_HP"])
    extra = {"TARGETID": TARGETID_BASE - 1 - np.arange(n_extra), **extra}
    with atomic_path(path) as tmp:
        reserve_space(tmp, len(CATALOGUE_NAMES) * 8 * (len(rows) + n_extra) + 2**20, name=path)
        _write_columns(tmp, cols, extra)


def _write_columns(path: Path, cols: dict, extra: dict) -> None:
    with h5py.File(path, "w") as f:
        for name in CATALOGUE_NAMES:
            data = np.concatenate([cols[name], extra[name]])
            f.create_dataset(name, data=data.astype(np.int64 if name == "TARGETID" else np.float64))
