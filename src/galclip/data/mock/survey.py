"""Write a mock survey in the AstroCLIP HDF5 layout plus a PROVABGS-layout catalogue.

``generate_mock`` streams batches of galaxies drawn from the fitted SDSS population
(``population``) into ``survey.h5`` (groups "0".."9") and writes ``provabgs.h5``. The
catalogue's labels are the truth used to make each galaxy. With ``modality="image"`` the groups
hold only images and targetids (galaxies nobody has a spectrum of, to predict); with "spectrum",
only spectra, redshifts and targetids.
"""

from __future__ import annotations

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
from galclip.data.mock import imaging, spectroscopy
from galclip.data.mock.population import Population, build_population
from galclip.data.mock.sed import DECAM_GRZ, Cosmology, load_filter, load_templates, template_maggies
from galclip.errors import InputError

logger = logging.getLogger(__name__)

SURVEY_FILE = "survey.h5"
CATALOGUE_FILE = "provabgs.h5"
TARGETID_BASE = 39627000000000000  # DESI-like targetid range
FIBRE_RADIUS_ARCSEC = 0.75
STAMP = IMAGE_SHAPE[0]


@dataclass
class MockBatch:
    """One batch of mock galaxies; arrays are (B, ...) and ``image`` is (B, 3, 152, 152) g,r,z."""

    image: np.ndarray
    image_noiseless: np.ndarray
    spectrum: np.ndarray  # (B, 7781) 1e-17 erg/s/cm²/Å, with noise
    spectrum_noiseless: np.ndarray
    z: np.ndarray
    log_mstar: np.ndarray
    coeffs: np.ndarray
    band_maggies: np.ndarray  # (B, 3) total g, r, z maggies
    r_e_arcsec: np.ndarray
    sersic_n: np.ndarray
    seeing_fwhm_arcsec: np.ndarray
    fibre_fraction: np.ndarray


class MockGenerator:
    """Draws galaxies from the population and renders their image and spectrum."""

    def __init__(self, config: MockConfig):
        self.config = config
        self.population: Population = build_population(config.redshift_stretch, config.z_max)
        self.templates = load_templates()
        self.cosmo = Cosmology()
        self.filters = tuple(load_filter(f) for f in DECAM_GRZ)
        self.wave = desi_wavelength()

    def draw(self, rng: np.random.Generator, n: int) -> MockBatch:
        pop = self.population
        pick = rng.integers(0, len(pop.z), n)
        z = np.clip(pop.z[pick] * (1 + rng.normal(0, 0.03, n)), 0.01, self.config.z_max)
        coeffs = pop.coeffs[pick] * 10 ** rng.normal(0, 0.05, n)[:, None]
        log_mstar = np.log10(coeffs @ self.templates.mremain)

        lateness = 1.0 / (1.0 + np.exp(-(np.log10(pop.young_fraction[pick] + 1e-12) + 7.0) / 0.7))
        sersic_n = np.clip(4.0 - 3.0 * lateness + rng.normal(0, 0.3, n), 0.7, 5.0)
        dm = log_mstar - 10.7
        log_re = (1 - lateness) * (0.60 + 0.75 * dm) + lateness * (0.86 + 0.25 * dm) + rng.normal(0, 0.15, n)
        re_arcsec = 10**log_re / (self.cosmo.angular_mpc(z) * 1e3) * 206264.8
        re_px = np.clip(re_arcsec / PIXEL_SCALE_ARCSEC, 0.3, 60.0)
        axis_ratio = rng.uniform(0.25 + 0.45 * (1 - lateness), 1.0)
        pa = rng.uniform(0, np.pi, n)
        centre = (STAMP - 1) / 2 + rng.uniform(-0.5, 0.5, (n, 2))
        profile = imaging.sersic_profiles(sersic_n, re_px, axis_ratio, pa, centre, STAMP)

        maggies = np.einsum("nt,ntf->nf", coeffs, template_maggies(self.templates, self.filters, z, self.cosmo))
        seeing = rng.uniform(1.0, 1.6, n)
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
        return MockBatch(
            image, clean, spectrum, spec_clean, z, log_mstar, coeffs, maggies, re_arcsec, sersic_n, seeing, fibre
        )


def _unique_targetids(rng: np.random.Generator, n: int) -> np.ndarray:
    ids = np.unique(rng.integers(0, 1 << 40, n + n // 10 + 16))
    while ids.size < n:
        ids = np.unique(np.concatenate([ids, rng.integers(0, 1 << 40, n)]))
    return TARGETID_BASE + rng.permutation(ids)[:n]


MOCK_NAMES = (SURVEY_FILE, CATALOGUE_FILE)


def generate_mock(
    config: MockConfig,
    out_dir: str | Path,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> dict:
    """Write ``survey.h5`` and ``provabgs.h5`` into ``out_dir``; returns a summary dict.

    Stores are built from survey files, so existing ones (a user's, or an earlier mock's) are replaced only with
    ``overwrite``; a folder that is new or empty is marked as the mock's (``galclip.outputs``)."""
    from galclip.outputs import MARKER, owner, remove_if_unused, write_marker

    out = Path(out_dir)
    if config.pairs < 1:
        raise ValueError("pairs must be >= 1")
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
        return _generate(config, out, progress)
    except BaseException:
        if created:
            remove_if_unused(out)
        raise


def _generate(config: MockConfig, out: Path, progress: Callable[[int], None] | None) -> dict:
    t0 = time.perf_counter()
    gen = MockGenerator(config)
    rng = np.random.default_rng(config.seed)
    n = config.pairs
    targetid = _unique_targetids(rng, n)
    n_groups = max(1, min(config.n_groups, n))
    bounds = np.linspace(0, n, n_groups + 1).astype(int)

    truth = {k: np.empty(n) for k in ("z", "log_mstar", "mag_g", "mag_r", "mag_z")}
    per_pair = (
        (np.prod(IMAGE_SHAPE) if config.modality in ("both", "image") else 0) * 4
        + 8
        + ((DESI_N_BINS + 1) * 4 if config.modality in ("both", "spectrum") else 0)
    )
    with atomic_path(out / SURVEY_FILE) as survey_tmp:
        reserve_space(survey_tmp, int(1.05 * n * per_pair) + 2**20, name=out / SURVEY_FILE)
        _write_survey(survey_tmp, config, gen, targetid, bounds, truth, progress)
    _write_catalogue(out / CATALOGUE_FILE, targetid, truth, config, rng)
    elapsed = time.perf_counter() - t0
    summary = {
        "pairs": n,
        "modality": config.modality,
        "seconds": elapsed,
        "pairs_per_s": n / elapsed,
        "survey": str(out / SURVEY_FILE),
        "catalogue": str(out / CATALOGUE_FILE),
    }
    logger.info("mock survey: %d pairs in %.1f s (%.0f pairs/s) -> %s", n, elapsed, n / elapsed, out)
    return summary


def _write_survey(
    path: Path,
    config: MockConfig,
    gen: MockGenerator,
    targetid: np.ndarray,
    bounds: np.ndarray,
    truth: dict,
    progress: Callable[[int], None] | None,
) -> None:
    """Fill the survey HDF5 at ``path`` batch by batch, in AstroCLIP's layout; ``truth`` gets z, M* and magnitudes."""
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
            groups.append(grp)
        for lo in range(0, n, config.batch_size):
            hi = min(lo + config.batch_size, n)
            batch = gen.draw(np.random.default_rng([config.seed, lo]), hi - lo)
            image_whc = batch.image.transpose(0, 3, 2, 1)  # (B, C, H, W) -> AstroCLIP's (B, W, H, C)
            mags = 22.5 - 2.5 * np.log10(np.clip(batch.band_maggies * 1e9, 1e-6, None))
            truth["z"][lo:hi], truth["log_mstar"][lo:hi] = batch.z, batch.log_mstar
            truth["mag_g"][lo:hi], truth["mag_r"][lo:hi], truth["mag_z"][lo:hi] = mags.T
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
    path: Path, targetid: np.ndarray, truth: dict, config: MockConfig, rng: np.random.Generator
) -> None:
    """PROVABGS-like catalogue: a labelled share of the pairs, a few spurious rows, some extras."""
    n = len(targetid)
    rows = np.flatnonzero(rng.random(n) < config.labelled_fraction)
    tid = targetid[rows]
    cols = {
        "TARGETID": tid,
        "Z_HP": truth["z"][rows],
        "PROVABGS_LOGMSTAR_BF": truth["log_mstar"][rows],
        "MAG_G": truth["mag_g"][rows],
        "MAG_R": truth["mag_r"][rows],
        "MAG_Z": truth["mag_z"][rows],
    }
    spurious = rng.random(len(rows)) < 0.02  # failed fits, as in the real VAC: removed by the cuts
    cols["PROVABGS_LOGMSTAR_BF"] = np.where(spurious, -999.0, cols["PROVABGS_LOGMSTAR_BF"])
    n_extra = max(1, n // 20)  # catalogue galaxies without an image-spectrum pair
    extra = {
        "TARGETID": TARGETID_BASE - 1 - np.arange(n_extra),
        "Z_HP": rng.uniform(0.01, 0.5, n_extra),
        "PROVABGS_LOGMSTAR_BF": rng.normal(10.8, 0.5, n_extra),
        "MAG_G": rng.uniform(18, 21, n_extra),
        "MAG_R": rng.uniform(17, 19.5, n_extra),
        "MAG_Z": rng.uniform(16, 19, n_extra),
    }
    with atomic_path(path) as tmp:
        reserve_space(tmp, 6 * 8 * (len(rows) + n_extra) + 2**20, name=path)
        _write_columns(tmp, cols, extra)


def _write_columns(path: Path, cols: dict, extra: dict) -> None:
    with h5py.File(path, "w") as f:
        for name in cols:
            data = np.concatenate([cols[name], extra[name]])
            f.create_dataset(name, data=data.astype(np.int64 if name == "TARGETID" else np.float64))
