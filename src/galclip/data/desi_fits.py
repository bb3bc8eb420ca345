"""Reader and writer for DESI coadd and spectra FITS files as desispec writes them (``desi-fits``).

A file holds ``FIBERMAP`` (one row per spectrum: TARGETID, TARGET_RA, TARGET_DEC, ...) and, per spectrograph arm
B, R and Z, the HDUs ``{ARM}_WAVELENGTH`` (nwave,) Å, ``{ARM}_FLUX`` (nspec, nwave) 1e-17 erg/s/cm²/Å,
``{ARM}_IVAR`` (nspec, nwave) and ``{ARM}_MASK`` (nspec, nwave), plus ``_RESOLUTION`` (not read). A file written
with the cameras already coadded holds one arm, ``BRZ``, instead; it is read the same way. The arms lie on the DESI
0.8 Å grid (B 3600–5800 Å, R 5760–7620, Z 7520–9824); each is placed on the 7781-bin grid
(:func:`galclip.data.layout.desi_wavelength`) by index, round((λ - 3600) / 0.8), and the arms are merged with
inverse-variance weights as desispec's ``coadd_cameras`` does: flux = Σ w f / Σ w and ivar = Σ w, with w the arm's
ivar, 0 where its MASK is non-zero or its flux or ivar is not finite. A pixel no arm measures gets flux 0 and ivar 0.

Rows are the FIBERMAP rows with TARGETID ≥ 0, in file order, files concatenated in the order given: real coadds
carry rows with negative TARGETIDs for sky fibres and stuck or broken positioners, which hold no galaxy and are
skipped. Redshifts come from the redrock (or older zbest) file beside each coadd (``coadd-X.fits`` ->
``redrock-X.fits`` or ``zbest-X.fits``), HDU ``REDSHIFTS`` (``ZBEST`` in zbest files), joined by TARGETID: NaN where
there is no such file or row (:meth:`DesiSpectra.zwarns` gives redrock's ZWARN, -1 there).

Each read takes the rows it needs from memory-mapped HDUs (each file opened once per process, a few kept open):
nothing is read per row.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from galclip.data.layout import DESI_N_BINS, DESI_WAVE_MAX, DESI_WAVE_MIN
from galclip.data.sources import ClosingSource, require_modalities
from galclip.data.survey import SurveyBatch
from galclip.errors import InputError

logger = logging.getLogger(__name__)

LAYOUT = "desi-fits"
FITS_MAGIC = b"SIMPLE  ="
GZIP_MAGIC = b"\x1f\x8b"
ARMS = ("B", "R", "Z")
MERGED_ARM = "BRZ"  # desispec's coadd_cameras output
ARM_HDUS = ("WAVELENGTH", "FLUX", "IVAR")  # required per arm; MASK is read where present
GRID_STEP = 0.8  # Å
GRID_TOLERANCE = 0.01  # Å: how far an arm's wavelength may lie from the grid
# the arms as the DESI spectrographs cover them (the writer cuts the 7781-bin grid so)
ARM_RANGES = {"B": (3600.0, 5800.0), "R": (5760.0, 7620.0), "Z": (7520.0, 9824.0)}
SPECTRA_PREFIXES = ("coadd-", "spectra-")
REDSHIFT_PREFIXES = ("redrock-", "zbest-")
REDSHIFT_HDUS = ("REDSHIFTS", "ZBEST")
FLUX_UNIT = "10**-17 erg/(s cm2 Angstrom)"
IVAR_UNIT = "10**+34 (s2 cm4 Angstrom2) / erg2"
MAX_OPEN_FILES = 8
SAMPLE_ROWS = 8  # rows per file whose spectra identify its content (DesiSpectra.content)
NO_ZWARN = -1


@dataclass(frozen=True)
class Arm:
    """One arm of a file: its HDU prefix and the grid bins it covers."""

    name: str
    start: int  # index on the 7781-bin grid of the arm's first pixel
    n_bins: int
    has_mask: bool


@dataclass(frozen=True, eq=False)
class CoaddFile:
    """What one coadd holds: the FIBERMAP rows read, their ids, positions and redshifts, and its arms."""

    path: str
    offset: int  # index of the file's first row in the whole source
    rows: np.ndarray  # (n,) int64 FIBERMAP (and flux) row of each source row
    targetid: np.ndarray  # (n,) int64
    ra: np.ndarray  # (n,) float64 degrees
    dec: np.ndarray
    redshift: np.ndarray  # (n,) float32, NaN where none
    zwarn: np.ndarray  # (n,) int64, NO_ZWARN where none
    arms: tuple[Arm, ...]
    redshift_file: str | None = None

    @property
    def n_rows(self) -> int:
        return len(self.rows)


def _is_fits(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(len(FITS_MAGIC))
    if head[:2] == GZIP_MAGIC:
        import gzip

        with gzip.open(path, "rb") as g:
            head = g.read(len(FITS_MAGIC))
    return head == FITS_MAGIC


def sniff(path: Path) -> bool:
    """Whether ``path`` is a desispec coadd or spectra file: FITS with an empty primary HDU and B/R/Z (or BRZ) arm
    HDUs or a FIBERMAP; redrock/zbest files (FIBERMAP beside REDSHIFTS) are not. False, without raising, otherwise."""
    try:
        if not _is_fits(path):
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
                if hdul[0].header.get("NAXIS", 0) != 0:
                    return False
                names = {h.name.upper() for h in hdul}
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError):
        return False
    if names & set(REDSHIFT_HDUS):
        return False
    arm_hdus = {f"{arm}_{kind}" for arm in (*ARMS, MERGED_ARM) for kind in ARM_HDUS}
    return bool(names & arm_hdus) or "FIBERMAP" in names


def redshift_file(path: Path) -> Path | None:
    """The redrock or zbest file beside a coadd or spectra file (``coadd-X.fits`` -> ``redrock-X.fits``,
    ``zbest-X.fits``, gzipped or not; a file named otherwise, ``X.fits`` -> ``redrock-X.fits``), or None."""
    name = path.name
    prefix = next((p for p in SPECTRA_PREFIXES if name.startswith(p)), "")
    rest = name[len(prefix) :]
    stem = rest[: -len(".gz")] if rest.endswith(".gz") else rest
    for zprefix in REDSHIFT_PREFIXES:
        for candidate in dict.fromkeys((rest, stem, stem + ".gz")):
            p = path.with_name(zprefix + candidate)
            if p.is_file():
                return p
    return None


def read_redshifts(path: Path, targetid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(z (n,) float32, zwarn (n,) int64) of ``targetid`` from the REDSHIFTS (or ZBEST) HDU of the redrock file
    ``path``, joined by TARGETID: NaN and NO_ZWARN where it has no row."""
    try:
        hdul = fits.open(path, memmap=False)
    except OSError as err:
        raise InputError(f"{path}: not a readable FITS file ({err}); re-download the redrock file") from err
    with hdul:
        names = [h.name for h in hdul]
        hdu = next((hdul[n] for n in REDSHIFT_HDUS if n in names), None)
        if hdu is None or hdu.data is None or "TARGETID" not in hdu.columns.names or "Z" not in hdu.columns.names:
            raise InputError(
                f"{path}: no REDSHIFTS HDU with TARGETID and Z (it holds {names}); a redrock file beside a coadd must "
                "hold them: re-download it, or move it away to read the coadd without redshifts"
            )
        zid = np.asarray(hdu.data["TARGETID"], np.int64)
        z = np.asarray(hdu.data["Z"], np.float64)
        zw = np.asarray(hdu.data["ZWARN"], np.int64) if "ZWARN" in hdu.columns.names else np.zeros(len(zid), np.int64)
    redshift = np.full(len(targetid), np.nan, np.float32)
    zwarn = np.full(len(targetid), NO_ZWARN, np.int64)
    if len(zid):
        order = np.argsort(zid, kind="stable")
        idx = order[np.clip(np.searchsorted(zid[order], targetid), 0, len(zid) - 1)]
        hit = zid[idx] == targetid
        redshift[hit], zwarn[hit] = z[idx[hit]], zw[idx[hit]]
    return redshift, zwarn


def _arm_on_grid(path: Path, arm: str, wave: np.ndarray) -> int:
    """Index on the 7781-bin grid of the arm's first pixel; refused, naming file and arm, when its wavelengths
    (Å) are not consecutive grid bins inside 3600–9824 Å."""
    wave = np.asarray(wave, np.float64).ravel()
    if wave.size == 0:
        raise InputError(f"{path}: {arm}_WAVELENGTH is empty; pass the coadd as desispec writes it")
    idx = np.rint((wave - DESI_WAVE_MIN) / GRID_STEP).astype(np.int64)
    off = np.abs(wave - (DESI_WAVE_MIN + GRID_STEP * idx))
    if off.max() > GRID_TOLERANCE:
        at = int(np.argmax(off))
        raise InputError(
            f"{path}: arm {arm}'s wavelengths are not on DESI's {GRID_STEP} Å grid from {DESI_WAVE_MIN:.0f} Å "
            f"({wave[at]:.3f} Å is {off[at]:.3f} Å off it); resample the arm onto that grid, or pass the coadd as "
            "desispec writes it"
        )
    if idx[0] < 0 or idx[-1] >= DESI_N_BINS:
        raise InputError(
            f"{path}: arm {arm} covers {wave.min():.1f}–{wave.max():.1f} Å, outside DESI's {DESI_WAVE_MIN:.0f}–"
            f"{DESI_WAVE_MAX:.0f} Å grid; cut the arm to that range, or pass the coadd as desispec writes it"
        )
    if np.any(np.diff(idx) != 1):
        raise InputError(
            f"{path}: arm {arm}'s wavelengths are not consecutive {GRID_STEP} Å steps (gaps or repeats); pass the "
            "coadd as desispec writes it"
        )
    return int(idx[0])


def _check_image(path: Path, hdul: fits.HDUList, name: str, shape: tuple[int, int]) -> None:
    hdr = hdul[name].header
    found = tuple(int(hdr.get(f"NAXIS{i}", 0)) for i in range(int(hdr.get("NAXIS", 0)), 0, -1))
    if found != shape:
        raise InputError(
            f"{path}: {name} has shape {found}, expected {shape} (one row per FIBERMAP row, one column per "
            "wavelength); pass the coadd as desispec writes it"
        )


def _arms(path: Path, hdul: fits.HDUList, names: set[str], n_fibermap: int) -> tuple[Arm, ...]:
    """The file's arms (B, R, Z, or the merged BRZ), checked against FIBERMAP and the grid."""
    wanted = (MERGED_ARM,) if f"{MERGED_ARM}_FLUX" in names else ARMS
    missing = [f"{a}_{k}" for a in wanted for k in ARM_HDUS if f"{a}_{k}" not in names]
    if missing:
        raise InputError(
            f"{path}: missing HDU(s) {', '.join(missing)}; a DESI coadd holds per arm B, R, Z the HDUs "
            "{ARM}_WAVELENGTH, {ARM}_FLUX, {ARM}_IVAR and {ARM}_MASK: pass the coadd-*.fits (or spectra-*.fits) "
            "file desispec wrote, whole"
        )
    arms = []
    for a in wanted:
        wave = hdul[f"{a}_WAVELENGTH"].data
        start = _arm_on_grid(path, a, wave)
        shape = (n_fibermap, int(np.size(wave)))
        kinds = ("FLUX", "IVAR", "MASK") if f"{a}_MASK" in names else ("FLUX", "IVAR")
        for k in kinds:
            _check_image(path, hdul, f"{a}_{k}", shape)
        arms.append(Arm(a, start, shape[1], "MASK" in kinds))
    return tuple(arms)


def _fibermap(path: Path, hdul: fits.HDUList, names: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TARGETID (n,) int64, TARGET_RA, TARGET_DEC (n,) float64 degrees, NaN when the columns are absent)."""
    if "FIBERMAP" not in names:
        raise InputError(
            f"{path}: no FIBERMAP HDU (it holds {sorted(names)}); a DESI coadd needs FIBERMAP (TARGETID, TARGET_RA, "
            "TARGET_DEC) beside its B/R/Z arms: pass the coadd-*.fits file desispec wrote, not a copy without it"
        )
    data = hdul["FIBERMAP"].data
    cols = [] if data is None else data.columns.names
    if "TARGETID" not in cols:
        raise InputError(
            f"{path}: FIBERMAP has no TARGETID column (it holds {cols[:12]}); pass the coadd as desispec writes it"
        )
    tid = np.asarray(data["TARGETID"], np.int64)
    ra, dec = (
        np.asarray(data[c], np.float64) if c in cols else np.full(len(tid), np.nan) for c in ("TARGET_RA", "TARGET_DEC")
    )
    return tid, ra, dec


def _open_fits(path: str | Path) -> fits.HDUList:
    try:
        return fits.open(path, memmap=True, lazy_load_hdus=True)
    except OSError as err:
        raise InputError(f"{path}: not a readable FITS file ({err}); re-download the coadd") from err


def describe_coadd(path: Path, offset: int) -> CoaddFile:
    """Check one coadd and list its rows (FIBERMAP rows with TARGETID ≥ 0), positions and redshifts; refused naming
    the file, what is missing and the fix."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        with _open_fits(path) as hdul:
            names = {h.name.upper() for h in hdul}
            tid, ra, dec = _fibermap(path, hdul, names)
            arms = _arms(path, hdul, names, len(tid))
    rows = np.flatnonzero(tid >= 0).astype(np.int64)
    if len(rows) < len(tid):
        logger.info(
            "%s: %d FIBERMAP row(s) with TARGETID < 0 (sky fibres, stuck positioners) skipped",
            path,
            len(tid) - len(rows),
        )
    tid, ra, dec = tid[rows], ra[rows], dec[rows]
    zfile = redshift_file(path)
    if zfile is None:
        redshift, zwarn = np.full(len(rows), np.nan, np.float32), np.full(len(rows), NO_ZWARN, np.int64)
    else:
        redshift, zwarn = read_redshifts(zfile, tid)
    return CoaddFile(
        path=str(path),
        offset=offset,
        rows=rows,
        targetid=tid,
        ra=ra,
        dec=dec,
        redshift=redshift,
        zwarn=zwarn,
        arms=arms,
        redshift_file=None if zfile is None else str(zfile),
    )


def _good_pixels(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(flux, ivar) float32 with both set to 0 where the mask is non-zero, ivar ≤ 0 or either is not finite."""
    f = np.asarray(flux, np.float32)
    w = np.asarray(ivar, np.float32)
    good = (w > 0) & (w < np.inf) & np.isfinite(f)
    if mask is not None:
        good &= np.asarray(mask) == 0
    if good.all():
        return f, w
    return np.where(good, f, np.float32(0)), np.where(good, w, np.float32(0))


def _runs(flags: np.ndarray) -> list[tuple[int, int, bool]]:
    """(start, stop, flag) of each run of equal values in the (m,) bool ``flags``."""
    edges = [0, *(np.flatnonzero(np.diff(flags)) + 1).tolist(), len(flags)]
    return [(a, b, bool(flags[a])) for a, b in zip(edges[:-1], edges[1:])]


def merge_arms(
    parts: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]],
) -> tuple[np.ndarray, np.ndarray]:
    """Arms onto the 7781-bin grid with inverse-variance weights, as desispec's ``coadd_cameras``.

    ``parts``: per arm (grid index of its first pixel, flux (n, m), ivar (n, m), mask (n, m) or None), the arms
    each covering consecutive grid bins. Returns flux, ivar (n, 7781) float32: Σ w f / Σ w and Σ w, with w the arm's
    ivar set to 0 where its mask is non-zero, its ivar ≤ 0 or its flux or ivar not finite; flux 0 where Σ w = 0.
    A bin only one arm covers gets that arm's values exactly; bins two arms share are combined in float64."""
    n = parts[0][1].shape[0]
    flux = np.zeros((n, DESI_N_BINS), np.float32)
    ivar = np.zeros((n, DESI_N_BINS), np.float32)
    covered = np.zeros(DESI_N_BINS, bool)
    for start, arm_flux, arm_ivar, arm_mask in parts:
        f, w = _good_pixels(arm_flux, arm_ivar, arm_mask)
        for a, b, shared in _runs(covered[start : start + f.shape[1]]):
            g = slice(start + a, start + b)
            if not shared:
                flux[:, g], ivar[:, g] = f[:, a:b], w[:, a:b]
                continue
            w0, w1 = ivar[:, g].astype(np.float64), w[:, a:b].astype(np.float64)
            total = w0 + w1
            num = w0 * flux[:, g] + w1 * f[:, a:b]
            flux[:, g] = np.divide(num, total, out=np.zeros_like(num), where=total > 0)
            ivar[:, g] = total
        covered[start : start + f.shape[1]] = True
    return flux, ivar


def open_source(files: list[Path], require: Sequence[str] = ()) -> DesiSpectra:
    """The reader of the DESI coadds ``files`` (the :mod:`galclip.data.sources` interface)."""
    return DesiSpectra(files, require=require)


class DesiSpectra(ClosingSource):
    """Lists and reads the galaxies of DESI coadd / spectra FITS files: spectra on the 7781-bin grid, with their
    inverse variance, positions and redrock redshifts."""

    layout = LAYOUT
    modalities: tuple[str, ...] = ("spectrum",)

    def __init__(self, files: Sequence[str | Path], require: Sequence[str] = ()):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise InputError("no DESI coadd files given; pass coadd-*.fits files or a folder of them")
        require_modalities(
            self.files, "DESI coadds", self.modalities, require, "the Legacy Survey cutouts (or another image file)"
        )
        coadds, offset = [], 0
        for path in self.files:
            coadds.append(describe_coadd(path, offset))
            offset += coadds[-1].n_rows
        self.coadds: tuple[CoaddFile, ...] = tuple(coadds)
        self.n_rows = offset
        if offset == 0:
            raise InputError(
                f"{', '.join(map(str, self.files))}: no galaxies (no FIBERMAP row has a TARGETID ≥ 0); pass the "
                "coadds that hold the spectra"
            )
        self._handles: OrderedDict[str, tuple[fits.HDUList, dict[str, np.ndarray]]] = OrderedDict()

    def targetids(self) -> np.ndarray:
        """(n_rows,) int64 FIBERMAP TARGETIDs in source order. A TARGETID twice is refused, naming the file(s)."""
        ids = np.concatenate([c.targetid for c in self.coadds])
        uniq, counts = np.unique(ids, return_counts=True)
        dup = uniq[counts > 1]
        if dup.size:
            first = int(dup[0])
            where = [c.path for c in self.coadds for t in c.targetid if t == first]
            if len(set(where)) == 1:
                raise InputError(
                    f"{where[0]}: TARGETID {first} appears {len(where)} times ({len(dup)} repeated TARGETID(s)); a "
                    "spectra-*.fits file holds one row per exposure: pass the coadd-*.fits files, one row per galaxy"
                )
            raise InputError(
                f"TARGETID {first} is in both {where[0]} and {where[1]} ({len(dup)} repeated TARGETID(s)); each "
                "galaxy must appear once: drop one of the files (or coadd them together)"
            )
        return ids

    def redshifts(self) -> np.ndarray:
        """(n_rows,) float32 redrock Z, NaN where no redrock file or row."""
        return np.concatenate([c.redshift for c in self.coadds])

    def zwarns(self) -> np.ndarray:
        """(n_rows,) int64 redrock ZWARN bits (0: a confident redshift), NO_ZWARN (-1) where no redrock row."""
        return np.concatenate([c.zwarn for c in self.coadds])

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec): (n_rows,) float64 degrees, FIBERMAP TARGET_RA / TARGET_DEC."""
        return np.concatenate([c.ra for c in self.coadds]), np.concatenate([c.dec for c in self.coadds])

    def _array(self, path: str, name: str) -> np.ndarray:
        """HDU ``name`` of the file ``path``, memory-mapped. Files stay open (the least recently used closed beyond
        MAX_OPEN_FILES), their arrays kept by name."""
        entry = self._handles.pop(path, None)
        if entry is None:
            entry = (_open_fits(path), {})
            while len(self._handles) >= MAX_OPEN_FILES:
                self._handles.popitem(last=False)[1][0].close()
        self._handles[path] = entry  # most recently used last
        hdul, arrays = entry
        if name not in arrays:
            arrays[name] = hdul[name].data
        return arrays[name]

    def _spectra(self, coadd: CoaddFile, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Merged flux, ivar (b - a, 7781) float32 of the file's rows [a, b)."""
        rows = coadd.rows[a:b]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        pick = None if hi - lo == len(rows) else rows - lo

        def take(name: str) -> np.ndarray:
            block = self._array(coadd.path, name)[lo:hi]
            return block if pick is None else block[pick]

        parts = [
            (
                arm.start,
                take(f"{arm.name}_FLUX"),
                take(f"{arm.name}_IVAR"),
                take(f"{arm.name}_MASK") if arm.has_mask else None,
            )
            for arm in coadd.arms
        ]
        return merge_arms(parts)

    def read(self, start: int, stop: int) -> SurveyBatch:
        """Rows ``[start, stop)`` (may span files): spectrum, spectrum_ivar (n, 7781) float32, redshift (n,)
        float32, targetid (n,) int64, ra, dec (n,) float64; image None."""
        if not 0 <= start < stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) are outside the {self.n_rows} spectra")
        fluxes, ivars, keep = [], [], []
        for c in self.coadds:
            lo, hi = max(start, c.offset), min(stop, c.offset + c.n_rows)
            if lo < hi:
                a, b = lo - c.offset, hi - c.offset
                flux, ivar = self._spectra(c, a, b)
                fluxes.append(flux)
                ivars.append(ivar)
                keep.append((c, a, b))
        cat = lambda name: np.concatenate([getattr(c, name)[a:b] for c, a, b in keep])
        return SurveyBatch(
            image=None,
            spectrum=fluxes[0] if len(fluxes) == 1 else np.concatenate(fluxes),
            redshift=cat("redshift"),
            targetid=cat("targetid"),
            spectrum_ivar=ivars[0] if len(ivars) == 1 else np.concatenate(ivars),
            ra=cat("ra"),
            dec=cat("dec"),
        )

    def locate(self, row: int) -> str:
        """'file:FIBERMAP[i]' holding row ``row``."""
        for c in self.coadds:
            if c.offset <= row < c.offset + c.n_rows:
                return f"{c.path}:FIBERMAP[{int(c.rows[row - c.offset])}]"
        raise IndexError(f"row {row} is outside the {self.n_rows} spectra")

    def fingerprint(self) -> dict:
        """Cheap identity (no bulk read): {"layout", "files", "bytes", "n_rows"}."""
        return {
            "layout": LAYOUT,
            "files": [str(f.resolve()) for f in self.files],
            "bytes": [f.stat().st_size for f in self.files],
            "n_rows": self.n_rows,
        }

    def content(self, samples: int = SAMPLE_ROWS) -> list[dict]:
        """Per file, as :meth:`galclip.data.survey.SurveyReader.content`: {"file", "bytes", "n_rows",
        "targetid_sha256" (of every TARGETID read), "sample_sha256" (of the merged flux, ivar and redshift of
        ``samples`` evenly spaced rows)}."""
        out = []
        for c in self.coadds:
            sample = hashlib.sha256()
            for row in np.unique(np.linspace(0, c.n_rows - 1, min(samples, c.n_rows)).round().astype(int)):
                flux, ivar = self._spectra(c, int(row), int(row) + 1)
                sample.update(flux.tobytes())
                sample.update(ivar.tobytes())
                sample.update(c.redshift[row : row + 1].tobytes())
            path = Path(c.path)
            out.append(
                {
                    "file": str(path.resolve()),
                    "bytes": path.stat().st_size,
                    "n_rows": c.n_rows,
                    "targetid_sha256": hashlib.sha256(np.ascontiguousarray(c.targetid, np.int64).tobytes()).hexdigest(),
                    "sample_sha256": sample.hexdigest(),
                }
            )
        return out

    def close(self) -> None:
        for hdul, arrays in self._handles.values():
            arrays.clear()
            hdul.close()
        self._handles.clear()

    def __getstate__(self) -> dict:  # DataLoader workers each open their own handles
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()
        return state


def _arm_slices() -> dict[str, slice]:
    """Grid slices of the three arms as the DESI spectrographs cover them: B 2751, R 2326, Z 2881 bins."""
    return {
        arm: slice(round((lo - DESI_WAVE_MIN) / GRID_STEP), round((hi - DESI_WAVE_MIN) / GRID_STEP) + 1)
        for arm, (lo, hi) in ARM_RANGES.items()
    }


def _image_hdu(data: np.ndarray, name: str, unit: str | None = None) -> fits.ImageHDU:
    hdu = fits.ImageHDU(data, name=name)
    if unit:
        hdu.header["BUNIT"] = unit
    return hdu


def write_coadd(
    path: str | Path,
    targetid: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    redshift: np.ndarray | None = None,
    zwarn: np.ndarray | None = None,
) -> None:
    """Write a desispec-like coadd: FIBERMAP (TARGETID, TARGET_RA, TARGET_DEC), and the B, R, Z arms cut from the
    (n, 7781) ``flux`` (1e-17 erg/s/cm²/Å) and ``ivar`` at 3600–5800, 5760–7620 and 7520–9824 Å, MASK 0. Where two
    arms overlap each gets half of ``ivar``, so reading the file back gives ``flux`` and ``ivar`` again. With
    ``redshift``, also the redrock file beside it (``coadd-X.fits`` -> ``redrock-X.fits``): REDSHIFTS (TARGETID, Z,
    ZWARN (``zwarn``, else 0), SPECTYPE 'GALAXY'). Each file is written atomically."""
    from galclip.atomic import atomic_path

    path = Path(path)
    tid = np.asarray(targetid, np.int64)
    n = len(tid)
    flux = np.asarray(flux, np.float32).reshape(n, -1)
    ivar = np.asarray(ivar, np.float32).reshape(n, -1)
    if flux.shape != (n, DESI_N_BINS) or ivar.shape != flux.shape:
        raise ValueError(f"flux {flux.shape} and ivar {ivar.shape} must both be ({n}, {DESI_N_BINS})")
    slices = _arm_slices()
    cover = np.zeros(DESI_N_BINS, np.float32)
    for s in slices.values():
        cover[s] += 1
    wave = DESI_WAVE_MIN + GRID_STEP * np.arange(DESI_N_BINS, dtype=np.float64)
    fibermap = fits.BinTableHDU.from_columns(
        [
            fits.Column("TARGETID", "K", array=tid),
            fits.Column("TARGET_RA", "D", array=np.asarray(ra, np.float64)),
            fits.Column("TARGET_DEC", "D", array=np.asarray(dec, np.float64)),
            fits.Column("COADD_FIBERSTATUS", "J", array=np.zeros(n, np.int32)),
        ],
        name="FIBERMAP",
    )
    hdus: list = [fits.PrimaryHDU(), fibermap]
    for arm, s in slices.items():
        hdus += [
            _image_hdu(wave[s], f"{arm}_WAVELENGTH", "Angstrom"),
            _image_hdu(np.ascontiguousarray(flux[:, s]), f"{arm}_FLUX", FLUX_UNIT),
            _image_hdu(np.ascontiguousarray(ivar[:, s] / cover[s]), f"{arm}_IVAR", IVAR_UNIT),
            _image_hdu(np.zeros((n, s.stop - s.start), np.int32), f"{arm}_MASK"),
        ]
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp)
    if redshift is not None:
        write_redrock(redrock_name(path), tid, redshift, zwarn)


def redrock_name(path: Path) -> Path:
    """Where the redrock file of the coadd ``path`` lies: ``coadd-X.fits`` -> ``redrock-X.fits``."""
    name = path.name
    prefix = next((p for p in SPECTRA_PREFIXES if name.startswith(p)), "")
    return path.with_name("redrock-" + name[len(prefix) :])


def write_redrock(path: str | Path, targetid: np.ndarray, redshift: np.ndarray, zwarn: np.ndarray | None) -> None:
    """Write a redrock file: REDSHIFTS (TARGETID, Z, ZWARN, SPECTYPE 'GALAXY'), atomically."""
    from galclip.atomic import atomic_path

    tid = np.asarray(targetid, np.int64)
    zw = np.zeros(len(tid), np.int64) if zwarn is None else np.asarray(zwarn, np.int64)
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column("TARGETID", "K", array=tid),
            fits.Column("Z", "D", array=np.asarray(redshift, np.float64)),
            fits.Column("ZWARN", "K", array=zw),
            fits.Column("SPECTYPE", "6A", array=np.array(["GALAXY"] * len(tid))),
        ],
        name="REDSHIFTS",
    )
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp)
