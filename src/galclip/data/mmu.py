"""Reader and writers for the Multimodal Universe's (MMU) ``legacysurvey`` and ``desi`` HDF5 files.

The MMU publishes one HDF5 file per healpix (``legacysurvey/dr10_south_21/healpix=N/001-of-001.hdf5``,
``desi/edr_sv3/healpix=N/001-of-001.hdf5``), every column a dataset at the file's root, one row per object. What the
builders (MMU ``scripts/legacysurvey/build_parent_sample.py`` and ``scripts/desi/build_parent_sample.py``) write,
and what this module reads:

``legacysurvey`` (images; :data:`LEGACYSURVEY_FIELDS`)
    ``image_array`` (N, 4, 160, 160) float32 nanomaggies, each row the (C, H, W) stack of the brick coadd cutouts;
    ``image_band`` (N, 4) fixed-length strings, lower case (b"des-g", b"des-r", b"des-i", b"des-z");
    ``image_scale`` (N, 4) float32 arcsec/pixel (0.262); ``image_ivar`` (N, 4, 160, 160) float32;
    ``image_psf_fwhm`` (N, 4) float32 arcsec; ``bit_mask`` (N, 160, 160) bool, True where the pixel is *clean*
    (none of maskbits 0-7, 11, 14, 15 set); ``object_id`` fixed-length string "BRICKNAME-OBJID" (not a DESI
    TARGETID); ``ra``, ``dec`` float64 degrees.
``desi`` (spectra; :data:`DESI_FIELDS`)
    ``spectrum_flux``, ``spectrum_ivar`` (N, 7781) float32 (1e-17 erg/s/cm²/Å and its inverse variance);
    ``spectrum_lambda`` (N, 7781) float32 Å, the coadd_cameras "brz" grid repeated per row; ``spectrum_mask``
    (N, 7781) bool, True where the pixel is *bad*; ``object_id`` int64 (the DESI TARGETID, also in ``TARGETID``);
    ``ra``, ``dec`` float64 (TARGET_RA/DEC); ``Z``, ``ZERR``, ``ZWARN`` from the redshift catalogue. The first
    builder wrote ``spectrum_lambda_min``/``_max`` per row instead of ``spectrum_lambda``, and no mask; both are read.
    Its healpix folders are DESI's own HEALPIX (nside 64), not the legacysurvey files' nside 16: the two kinds pair
    by position, never by folder.

Rows come out in AstroCLIP's conventions (:class:`galclip.data.survey.SurveyBatch`): images (n, 152, 152, 3) g,r,z,
each row the (C, H, W) cube transposed to (W, H, C) and centre-cropped from 160 to 152 pixels; spectra (n, 7781)
with their inverse variance, 0 where ``spectrum_mask`` marks a bad pixel. Legacy Survey objects have no TARGETID:
their ids are :func:`galclip.data.sources.position_targetid` of (ra, dec), and :meth:`MMUSource.object_ids` keeps
the MMU's own ids for messages.

Image masking: by default the flux is read as stored, as AstroCLIP's images (unmasked Legacy Survey cutouts) were,
so the encoders see what they were trained on. The builder's ``bit_mask`` is a quality flag, not a no-data flag
(bit 0, NPRIMARY, marks every pixel outside the brick's primary region, which holds real data). ``mask_images=True``
sets the flux to 0 where ``image_ivar`` is 0 or ``bit_mask`` is False; it reads twice the bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from galclip.atomic import atomic_path
from galclip.data.layout import DESI_N_BINS, IMAGE_BANDS, IMAGE_SHAPE, PIXEL_SCALE_ARCSEC, desi_wavelength
from galclip.data.sources import ClosingSource, position_targetid, require_modalities
from galclip.data.survey import HDF5_MAGIC, SurveyBatch, concat_batches
from galclip.errors import InputError

logger = logging.getLogger(__name__)

LAYOUT = "mmu"
LEGACYSURVEY = "legacysurvey"
DESI = "desi"
KIND_MODALITIES = {LEGACYSURVEY: ("image",), DESI: ("spectrum",)}

LEGACYSURVEY_FIELDS = ("image_array", "image_band", "image_scale", "object_id", "ra", "dec")
DESI_FIELDS = ("spectrum_flux", "spectrum_ivar", "spectrum_lambda", "object_id", "ra", "dec")
REDSHIFT_FIELDS = ("Z", "z")  # the builder keeps the catalogue's Z; one loading-script version reads 'z'

MMU_BANDS = ("des-g", "des-r", "des-i", "des-z")  # as the builder writes them (lower case)
MMU_CUTOUT = 160  # pixels, the builder's cutout size
CROP = IMAGE_SHAPE[0]  # 152
SCALE_TOLERANCE = 5e-4  # arcsec/pixel
LAMBDA_TOLERANCE = 0.01  # Å
LAMBDA_CHECK_ROWS = 3  # rows per file whose wavelengths are checked against the DESI grid
BAD_IVAR = 1e-6  # the builder marks pixels with ivar below this as bad
SAMPLE_ROWS = 8  # rows per file whose bytes identify its content (MMUSource.content)
CHUNK_CACHE_BYTES = 4 << 20  # per open file: the MMU's files are gzip-chunked

LEGACYSURVEY_HOLDS = (
    "an MMU legacysurvey file holds image_array (N, 4, 160, 160) nanomaggies, image_band (DES-G/R/I/Z), "
    "image_scale (0.262″), object_id, ra and dec at its root"
)
DESI_HOLDS = (
    "an MMU desi file holds spectrum_flux, spectrum_ivar and spectrum_lambda (N, 7781), spectrum_mask, "
    "object_id (the TARGETID), ra, dec and Z at its root"
)
REFETCH = "download the healpix file again from the Multimodal Universe, or write it with galclip.data.mmu.write_{kind}"


# ---------------------------------------------------------------------------------------------------- detection


def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(8) == HDF5_MAGIC
    except OSError:
        return False


def _kind_of(root: h5py.Group) -> str | None:
    """The MMU kind a file's root looks like (by its image or spectrum dataset), None for neither."""
    has_image = isinstance(root.get("image_array"), h5py.Dataset)
    has_spectrum = isinstance(root.get("spectrum_flux"), h5py.Dataset)
    if has_image and not has_spectrum:
        return LEGACYSURVEY
    if has_spectrum and not has_image:
        return DESI
    return None


def sniff(path: Path) -> bool:
    """Whether ``path`` is an MMU legacysurvey or desi HDF5: 'image_array' or 'spectrum_flux' (not both) at its
    root. Never raises; False for FITS, AstroCLIP HDF5 (groups "0".."9") and anything unreadable. What else a file
    must hold is checked, and named when missing, by :func:`open_source`."""
    if not _is_hdf5(Path(path)):
        return False
    try:
        with h5py.File(path, "r") as f:
            return _kind_of(f) is not None
    except Exception:  # a sniffer answers no for whatever it cannot read
        return False


def kind(path: Path) -> str:
    """Which MMU file ``path`` is, "legacysurvey" or "desi"; refused naming the file when neither."""
    try:
        with h5py.File(path, "r") as f:
            found = _kind_of(f)
            both = "image_array" in f and "spectrum_flux" in f
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err}); download it again") from err
    if found is None:
        what = "both image_array and spectrum_flux" if both else "neither image_array nor spectrum_flux"
        raise InputError(
            f"{path}: holds {what} at its root, so it is not one MMU legacysurvey or desi file; {LEGACYSURVEY_HOLDS}; "
            f"{DESI_HOLDS}"
        )
    return found


# ---------------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class MMUFile:
    """One healpix file: its rows ``[offset, offset + n_rows)`` of the source.

    ``bands``: legacysurvey only, the indices of g, r, z along ``image_array``'s band axis; ``top``/``left``: the
    first row/column of the 152-pixel centre crop."""

    path: str
    n_rows: int
    offset: int
    bands: tuple[int, ...] = ()
    top: int = 0
    left: int = 0


def _missing(path: Path, kind_: str, missing: list[str]) -> InputError:
    holds = LEGACYSURVEY_HOLDS if kind_ == LEGACYSURVEY else DESI_HOLDS
    return InputError(f"{path}: missing {missing}; {holds}; {REFETCH.format(kind=kind_)}")


def _check_rows(path: Path, f: h5py.File, n: int, names: Sequence[str], min_ndim: int = 1) -> None:
    """Every dataset ``names`` that ``f`` holds with at least ``min_ndim`` dimensions has ``n`` rows."""
    for name in names:
        if name in f and f[name].ndim >= min_ndim and f[name].shape[0] != n:
            raise InputError(f"{path}: '{name}' has {f[name].shape[0]} rows but the file's objects number {n}")


def _decode(values: np.ndarray) -> np.ndarray:
    """Stored strings (fixed-length bytes, variable-length bytes or str objects) as a numpy str array."""
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8")
    if values.dtype.kind == "O":
        return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.ravel()]).reshape(
            values.shape
        )
    return values.astype(str)


def _strings(ds: h5py.Dataset) -> np.ndarray:
    """A string (or integer id) dataset as a numpy str array of its shape."""
    return _decode(np.asarray(ds[()]))


def _band_letter(name: str) -> str:
    """'des-g', 'DES-G' or 'g' -> 'g'; another survey's band ('hsc-g') stays whole, so it is no g band."""
    prefix, _, letter = name.strip().lower().rpartition("-")
    return letter if prefix in ("", "des", "decam") else name.strip().lower()


def _band_indices(path: Path, f: h5py.File, n_bands: int) -> tuple[int, ...]:
    """Indices of g, r, z along the band axis, from 'image_band' ((N, B) per row or (B,) once)."""
    ds = f["image_band"]
    raw = np.asarray(ds[()])
    rows = raw.reshape(1, -1) if raw.ndim == 1 else raw.reshape(raw.shape[0], -1)
    if rows.shape[1] != n_bands:
        raise InputError(
            f"{path}: 'image_band' names {rows.shape[1]} bands but 'image_array' holds {n_bands}; {LEGACYSURVEY_HOLDS}"
        )
    if rows.shape[0] > 1 and not (rows == rows[0]).all():  # compared as stored, decoded only to name them
        bad = int(np.flatnonzero((rows != rows[0]).any(axis=1))[0])
        listed = _decode(rows[[0, bad]])
        raise InputError(
            f"{path}: row {bad} lists its bands as {list(listed[1])}, row 0 as {list(listed[0])}; galclip reads "
            "files whose rows all hold their bands in one order: rewrite the file with one band order"
        )
    order = _decode(rows[0])
    letters = [_band_letter(b) for b in order]
    lacking = [b for b in IMAGE_BANDS if b not in letters]
    if lacking:
        raise InputError(
            f"{path}: no {', '.join(lacking)} band among its bands {list(order)}; galclip needs g, r and z "
            f"(the MMU legacysurvey bands are {', '.join(b.upper() for b in MMU_BANDS)}): is this a legacysurvey file?"
        )
    return tuple(letters.index(b) for b in IMAGE_BANDS)


def _check_scale(path: Path, f: h5py.File, bands: tuple[int, ...]) -> None:
    scale = np.asarray(f["image_scale"][()], dtype=np.float64)
    scale = scale.reshape(-1, scale.shape[-1])[:, list(bands)] if scale.ndim else np.full((1, 3), float(scale))
    off = ~(np.abs(scale - PIXEL_SCALE_ARCSEC) <= SCALE_TOLERANCE)
    if off.any():
        row, band = np.argwhere(off)[0]
        raise InputError(
            f"{path}: pixel scale {scale[row, band]:.4g}″ ({IMAGE_BANDS[band]} band, row {row}) in 'image_scale'; "
            f"galclip's encoders expect the Legacy Survey's {PIXEL_SCALE_ARCSEC}″ per pixel: resample the cutouts "
            "to 0.262″ or use Legacy Survey DR10 images"
        )


def _check_legacysurvey(path: Path, f: h5py.File) -> tuple[int, tuple[int, ...], int, int]:
    """(rows, g/r/z band indices, crop top, crop left) of one legacysurvey file, refused naming what is wrong."""
    missing = [k for k in LEGACYSURVEY_FIELDS if k not in f]
    if missing:
        raise _missing(path, LEGACYSURVEY, missing)
    img = f["image_array"]
    if img.ndim != 4 or min(img.shape[2:]) < CROP:
        raise InputError(
            f"{path}: 'image_array' has shape {img.shape}, expected (N, bands, H, W) with H, W >= {CROP} "
            f"(the MMU writes (N, 4, {MMU_CUTOUT}, {MMU_CUTOUT})); {LEGACYSURVEY_HOLDS}"
        )
    n = img.shape[0]
    _check_rows(path, f, n, ("object_id", "ra", "dec", "image_ivar", "bit_mask"))
    _check_rows(path, f, n, ("image_band", "image_scale", "image_psf_fwhm"), min_ndim=2)  # (B,): once per file
    if "image_ivar" in f and f["image_ivar"].shape != img.shape:
        raise InputError(f"{path}: 'image_ivar' has shape {f['image_ivar'].shape}, 'image_array' {img.shape}")
    bands = _band_indices(path, f, img.shape[1])
    _check_scale(path, f, bands)
    height, width = img.shape[2:]
    return n, bands, height // 2 - CROP // 2, width // 2 - CROP // 2


def _spectrum_rows(ds: h5py.Dataset) -> tuple[int, int]:
    """(rows, bins) of a (N, bins) or (N, bins, 1) spectrum dataset."""
    if ds.ndim == 2 or (ds.ndim == 3 and ds.shape[2] == 1):
        return ds.shape[0], ds.shape[1]
    return ds.shape[0] if ds.ndim else 0, -1


def _check_wavelength_range(path: Path, f: h5py.File) -> None:
    """Files of the MMU's first desi builder give 'spectrum_lambda_min'/'_max' per row instead of the grid: with 7781
    bins they must span 3600-9824 Å (within 0.01 Å)."""
    grid = desi_wavelength()
    for name, want in (("spectrum_lambda_min", grid[0]), ("spectrum_lambda_max", grid[-1])):
        values = np.asarray(f[name][()], dtype=np.float64).reshape(-1)
        off = float(np.max(np.abs(values - want))) if values.size else 0.0
        if not off <= LAMBDA_TOLERANCE:
            raise InputError(
                f"{path}: '{name}' differs from the DESI grid's {want:.0f} Å by up to {off:.3g} Å; galclip reads "
                "spectra on the DESI grid (3600-9824 Å in 0.8 Å steps): resample them onto that grid"
            )


def _check_wavelength(path: Path, f: h5py.File, n: int) -> None:
    """The wavelengths of a few rows against the DESI grid, 3600-9824 Å in 0.8 Å steps, within 0.01 Å."""
    if "spectrum_lambda" not in f:
        return _check_wavelength_range(path, f)
    lam = f["spectrum_lambda"]
    grid = desi_wavelength()
    rows = [None] if lam.ndim == 1 else np.unique(np.linspace(0, n - 1, min(LAMBDA_CHECK_ROWS, n)).round().astype(int))
    for row in rows:
        values = np.asarray(lam[()] if row is None else lam[int(row)], dtype=np.float64).reshape(-1)
        where = "" if row is None else f" (row {row})"
        if values.shape != grid.shape:
            raise InputError(
                f"{path}: 'spectrum_lambda'{where} has {values.size} bins, the DESI grid {DESI_N_BINS} "
                "(3600-9824 Å in 0.8 Å steps); resample the spectra onto that grid"
            )
        off = float(np.max(np.abs(values - grid)))
        if not off <= LAMBDA_TOLERANCE:
            raise InputError(
                f"{path}: 'spectrum_lambda'{where} runs {values[0]:.2f}-{values[-1]:.2f} Å and differs from the DESI "
                f"grid (3600-9824 Å in 0.8 Å steps) by up to {off:.3g} Å; resample the spectra onto that grid"
            )


def _check_desi(path: Path, f: h5py.File) -> int:
    """Rows of one desi file, refused naming what is wrong."""
    missing = [k for k in DESI_FIELDS if k not in f]
    if missing == ["spectrum_lambda"] and all(f"spectrum_lambda_{end}" in f for end in ("min", "max")):
        missing = []  # the first builder's schema: the grid's ends per row
    if missing:
        raise _missing(path, DESI, missing)
    n, bins = _spectrum_rows(f["spectrum_flux"])
    if bins != DESI_N_BINS:
        raise InputError(
            f"{path}: 'spectrum_flux' has shape {f['spectrum_flux'].shape}, expected (N, {DESI_N_BINS}) on the DESI "
            "grid (3600-9824 Å in 0.8 Å steps); resample the spectra onto that grid"
        )
    for name in ("spectrum_ivar", "spectrum_mask"):
        if name in f and _spectrum_rows(f[name]) != (n, bins):
            raise InputError(f"{path}: '{name}' has shape {f[name].shape}, 'spectrum_flux' {f['spectrum_flux'].shape}")
    lam = ("spectrum_lambda", "spectrum_lambda_min", "spectrum_lambda_max")
    _check_rows(path, f, n, ("object_id", "ra", "dec", *lam, *REDSHIFT_FIELDS, "ZWARN"))
    if n:
        _check_wavelength(path, f, n)
    return n


# ---------------------------------------------------------------------------------------------------- reader


def open_source(files: list[Path], require: Sequence[str] = (), mask_images: bool = False) -> MMUSource:
    """The reader of MMU ``files``, all legacysurvey or all desi (the :mod:`galclip.data.sources` interface, which
    groups files by :func:`kind`); each must hold the modalities ``require``."""
    return MMUSource(files, require=require, mask_images=mask_images)


class MMUSource(ClosingSource):
    """Lists and reads the objects of one or more MMU healpix files of one kind, rows concatenated in sorted path
    order. Handles open lazily, one per file per process (dropped when pickled for DataLoader workers).

    ``mask_images``: set the flux to 0 where 'image_ivar' is 0 or 'bit_mask' is False (off by default: see the
    module docstring)."""

    layout = LAYOUT

    def __init__(self, files: Sequence[str | Path], require: Sequence[str] = (), mask_images: bool = False):
        self.files = sorted(Path(p) for p in files)
        if not self.files:
            raise InputError("no MMU files given; pass the healpix .hdf5 files (or folders of them)")
        kinds = {str(p): kind(p) for p in self.files}
        if len(set(kinds.values())) > 1:
            first = {k: p for p, k in reversed(kinds.items())}
            raise InputError(
                f"{first[LEGACYSURVEY]} (MMU legacysurvey, images) and {first[DESI]} (MMU desi, spectra) were passed "
                "as one source; open each kind on its own (galclip.data.sources.open_survey pairs them on the sky)"
            )
        self.kind: str = next(iter(kinds.values()))
        self.modalities: tuple[str, ...] = KIND_MODALITIES[self.kind]
        self.mask_images = mask_images
        self.parts = self._list_parts()
        self.n_rows = sum(p.n_rows for p in self.parts)
        self._check_require(require)
        if self.n_rows == 0:
            raise InputError(f"{', '.join(map(str, self.files))}: no objects (every file has 0 rows)")
        self._handles: dict[str, tuple[h5py.File, dict[str, h5py.Dataset]]] = {}
        self._pool: ThreadPoolExecutor | None = None  # reads the next band while this thread transposes one
        self._pid = os.getpid()
        logger.info("MMU %s: %d objects in %d file(s)", self.kind, self.n_rows, len(self.files))

    def _list_parts(self) -> list[MMUFile]:
        parts, offset = [], 0
        for path in self.files:
            try:
                with h5py.File(path, "r") as f:
                    if self.kind == LEGACYSURVEY:
                        n, bands, top, left = _check_legacysurvey(path, f)
                        part = MMUFile(str(path), n, offset, bands, top, left)
                    else:
                        part = MMUFile(str(path), _check_desi(path, f), offset)
            except OSError as err:
                raise InputError(f"{path}: not a readable HDF5 file ({err}); download it again") from err
            parts.append(part)
            offset += part.n_rows
        return parts

    def _check_require(self, require: Sequence[str]) -> None:
        other = DESI if self.kind == LEGACYSURVEY else LEGACYSURVEY
        require_modalities(
            self.files,
            f"MMU {self.kind} files",
            self.modalities,
            require,
            f"the MMU {other} files of the same sky (paired by position: the two number their healpix folders "
            "differently)",
        )

    # -- handles

    def _file(self, part: MMUFile) -> dict[str, h5py.Dataset]:
        """The root datasets of ``part``'s file by name, opened once per process (name lookups cost as much as a
        batch's small reads)."""
        if self._pid != os.getpid():  # forked with handles open: HDF5 handles and threads do not survive a fork
            self._handles, self._pool, self._pid = {}, None, os.getpid()
        opened = self._handles.get(part.path)
        if opened is None:
            handle = h5py.File(part.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
            sets = {name: node for name, node in handle.items() if isinstance(node, h5py.Dataset)}
            opened = self._handles[part.path] = (handle, sets)
        return opened[1]

    def _reader(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmu-read")
        return self._pool

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown()
        self._pool = None
        for handle, _ in self._handles.values():
            handle.close()
        self._handles.clear()

    def __getstate__(self) -> dict:  # DataLoader workers each open their own handles
        state = self.__dict__.copy()
        state["_handles"], state["_pool"] = {}, None
        return state

    # -- per-object columns

    def _column(self, name: str, dtype, fill=np.nan) -> np.ndarray:
        out = []
        for part in self.parts:
            f = self._file(part)
            out.append(f[name][()].astype(dtype) if name in f else np.full(part.n_rows, fill, dtype))
        return np.concatenate(out)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec): (n_rows,) float64 degrees each."""
        return self._column("ra", np.float64), self._column("dec", np.float64)

    def _part_targetids(self, part: MMUFile, a: int = 0, b: int | None = None) -> np.ndarray:
        f = self._file(part)
        b = part.n_rows if b is None else b
        if self.kind == LEGACYSURVEY:
            return position_targetid(f["ra"][a:b], f["dec"][a:b])
        ids = f["object_id"]
        if ids.dtype.kind in "iu":
            return ids[a:b].astype(np.int64)
        try:
            return _strings(ids)[a:b].astype(np.int64)
        except ValueError as err:
            raise InputError(f"{part.path}: 'object_id' holds non-integer ids; {DESI_HOLDS}") from err

    def targetids(self) -> np.ndarray:
        """(n_rows,) int64, unique: the DESI TARGETIDs (desi) or position ids of (ra, dec) (legacysurvey).
        Duplicates are refused naming the files that hold them."""
        per_part = [self._part_targetids(p) for p in self.parts]
        ids = np.concatenate(per_part)
        uniq, counts = np.unique(ids, return_counts=True)
        dup = uniq[counts > 1]
        if dup.size:
            where = [p.path for p, t in zip(self.parts, per_part) if np.isin(t, dup[:5]).any()]
            example = dup[:5].tolist()
            if self.kind == LEGACYSURVEY:
                names = self.object_ids()[np.isin(ids, dup[:1])]
                example = f"object_ids {names.tolist()} at one position (within 1e-5 deg)"
            raise InputError(
                f"{len(dup)} duplicate targetid(s) among the MMU {self.kind} files, e.g. {example} (in "
                f"{', '.join(where)}); each object must appear once: pass each healpix file once, or drop the "
                "repeated rows"
            )
        return ids

    def object_ids(self) -> np.ndarray:
        """(n_rows,) str: the MMU's own ids ("BRICKNAME-OBJID" for legacysurvey, the TARGETID for desi)."""
        return np.concatenate([_strings(self._file(p)["object_id"]) for p in self.parts])

    def redshifts(self) -> np.ndarray:
        """(n_rows,) float32: 'Z' (desi), NaN where a file has none (every legacysurvey file)."""
        return np.concatenate([self._redshift(p, 0, p.n_rows) for p in self.parts])

    def zwarn(self) -> np.ndarray:
        """(n_rows,) int64 redrock ZWARN (0: no problem), -1 where a file has none. Not applied to redshifts."""
        return self._column("ZWARN", np.int64, fill=-1)

    def _redshift(self, part: MMUFile, a: int, b: int) -> np.ndarray:
        f = self._file(part)
        for name in REDSHIFT_FIELDS:
            if self.kind == DESI and name in f:
                return f[name][a:b].astype(np.float32)
        return np.full(b - a, np.nan, np.float32)

    # -- bulk reads

    def _image(self, part: MMUFile, a: int, b: int) -> np.ndarray:
        """(b - a, 152, 152, 3) float32 g,r,z: each band's (n, H, W) plane read whole (contiguous in the file) by
        the reader thread while this one copies the previous band's row crops, transposed to AstroCLIP's (W, H)."""
        f = self._file(part)
        n = b - a
        rows, cols = slice(part.top, part.top + CROP), slice(part.left, part.left + CROP)
        out = np.empty((n, CROP, CROP, len(part.bands)), np.float32)
        planes = [np.empty((n, *f["image_array"].shape[2:]), np.float32) for _ in range(2)]
        clean = self._clean(f, a, b)

        def load(j: int) -> np.ndarray:
            plane = planes[j % 2]  # band j - 1 is copied out of the other buffer meanwhile
            f["image_array"].read_direct(plane, np.s_[a:b, part.bands[j]])
            if self.mask_images and "image_ivar" in f:
                plane[self._rows(f["image_ivar"], a, b, part.bands[j]) == 0] = 0
            if clean is not None:
                plane[~clean] = 0
            return plane

        pending = self._reader().submit(load, 0)
        for j in range(len(part.bands)):
            plane = pending.result()
            if j + 1 < len(part.bands):
                pending = self._reader().submit(load, j + 1)
            for i in range(n):  # row by row: a (152, 152) transpose stays in cache
                out[i, :, :, j] = plane[i, rows, cols].T
        return out

    def _clean(self, f: dict[str, h5py.Dataset], a: int, b: int) -> np.ndarray | None:
        """(b - a, H, W) bool 'bit_mask' (True: clean) when masking images, else None."""
        if not self.mask_images or "bit_mask" not in f:
            return None
        mask = f["bit_mask"]
        return np.asarray(mask[a:b] if mask.ndim == 3 else mask[a:b].all(axis=1), bool)

    def _spectrum(self, part: MMUFile, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(flux, ivar), (b - a, 7781) float32 each; ivar 0 where 'spectrum_mask' is True (the builder sets it where
        the coadd's mask is set or ivar < 1e-6), or, in a file without one, where ivar is not > 0."""
        f = self._file(part)
        flux, ivar = (self._rows(f[name], a, b).reshape(b - a, -1) for name in ("spectrum_flux", "spectrum_ivar"))
        if "spectrum_mask" in f:
            bad = f["spectrum_mask"][a:b].reshape(b - a, -1).astype(bool, copy=False)
        else:
            bad = ~(ivar > 0)
        np.putmask(ivar, bad, 0.0)
        return flux, ivar

    @staticmethod
    def _rows(ds: h5py.Dataset, a: int, b: int, band: int | None = None) -> np.ndarray:
        """Rows ``[a, b)`` of ``ds`` (of its band ``band`` when given) as float32, read straight into a new array."""
        shape = ds.shape[1:] if band is None else ds.shape[2:]
        out = np.empty((b - a, *shape), np.float32)
        if b > a:
            ds.read_direct(out, np.s_[a:b] if band is None else np.s_[a:b, band])
        return out

    def _read_part(self, part: MMUFile, a: int, b: int) -> SurveyBatch:
        f = self._file(part)
        image = self._image(part, a, b) if self.kind == LEGACYSURVEY else None
        flux, ivar = self._spectrum(part, a, b) if self.kind == DESI else (None, None)
        return SurveyBatch(
            image=image,
            spectrum=flux,
            redshift=self._redshift(part, a, b),
            targetid=self._part_targetids(part, a, b),
            spectrum_ivar=ivar,
            ra=f["ra"][a:b].astype(np.float64),
            dec=f["dec"][a:b].astype(np.float64),
        )

    def read(self, start: int, stop: int) -> SurveyBatch:
        """Rows ``[start, stop)`` (may span files) as a :class:`SurveyBatch`: images (n, 152, 152, 3) g,r,z
        nanomaggies (legacysurvey) or spectra and ivar (n, 7781) (desi); targetid, redshift, ra, dec."""
        if not 0 <= start < stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) are outside the source's {self.n_rows} rows")
        parts = []
        for part in self.parts:
            lo, hi = max(start, part.offset), min(stop, part.offset + part.n_rows)
            if lo < hi:
                parts.append(self._read_part(part, lo - part.offset, hi - part.offset))
        return concat_batches(parts)

    def locate(self, row: int) -> str:
        """'file:/[index]' holding source row ``row`` (for messages; :meth:`object_ids` names the object)."""
        for part in self.parts:
            if part.offset <= row < part.offset + part.n_rows:
                return f"{part.path}:/[{row - part.offset}]"
        raise IndexError(f"row {row} is outside the source's {self.n_rows} rows")

    # -- identity

    def fingerprint(self) -> dict:
        """Cheap identity of the data (no bulk read): files, sizes, rows per file."""
        return {
            "layout": f"{LAYOUT}:{self.kind}",
            "files": [str(p.resolve()) for p in self.files],
            "bytes": [p.stat().st_size for p in self.files],
            "segments": [[Path(p.path).name, "", p.n_rows] for p in self.parts],
            "n_rows": self.n_rows,
        }

    def content(self, samples: int = SAMPLE_ROWS) -> list[dict]:
        """Per file {"file", "bytes", "n_rows", "targetid_sha256" (of every targetid), "sample_sha256" (of the
        stored pixels or fluxes and redshifts of ``samples`` evenly spaced rows)}, as
        :meth:`galclip.data.survey.SurveyReader.content`: equal only for files holding the same objects in the same
        rows with the same data, wherever they lie."""
        out = []
        bulk = "image_array" if self.kind == LEGACYSURVEY else "spectrum_flux"
        for part in self.parts:
            f = self._file(part)
            ids, sample = hashlib.sha256(), hashlib.sha256()
            ids.update(np.ascontiguousarray(self._part_targetids(part), dtype=np.int64).tobytes())
            rows = np.unique(np.linspace(0, part.n_rows - 1, min(samples, part.n_rows)).round().astype(int))
            for row in rows:
                for name in (bulk, *REDSHIFT_FIELDS):
                    if name in f:
                        sample.update(np.ascontiguousarray(f[name][int(row)]).tobytes())
            path = Path(part.path)
            out.append(
                {
                    "file": str(path.resolve()),
                    "bytes": path.stat().st_size,
                    "n_rows": part.n_rows,
                    "targetid_sha256": ids.hexdigest(),
                    "sample_sha256": sample.hexdigest(),
                }
            )
        return out


# ---------------------------------------------------------------------------------------------------- writers


def _as_ids(object_id: np.ndarray | Sequence) -> np.ndarray:
    """(n,) bytes ids from bytes or str."""
    values = np.asarray(object_id)
    return values.astype("S") if values.dtype.kind == "S" else np.char.encode(values.astype(str), "utf-8")


def _pad_to_cutout(image_chw: np.ndarray) -> np.ndarray:
    """(n, 3, 152|160, 152|160) -> (n, 3, 160, 160), 152-pixel images zero-padded by 4 pixels on every side."""
    height, width = image_chw.shape[2:]
    if (height, width) == (MMU_CUTOUT, MMU_CUTOUT):
        return image_chw
    if (height, width) != (CROP, CROP):
        raise ValueError(f"image_chw rows are {height}x{width} pixels; give 152x152 or 160x160")
    pad = (MMU_CUTOUT - CROP) // 2
    return np.pad(image_chw, ((0, 0), (0, 0), (pad, pad), (pad, pad)))


def write_legacysurvey(
    path: str | Path,
    image_chw: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    object_id: np.ndarray | Sequence,
    psf_fwhm: np.ndarray | None = None,
    band_order: Sequence[str] = ("g", "r", "i", "z"),
    pixel_scale: float = PIXEL_SCALE_ARCSEC,
    compression: str | None = None,
) -> Path:
    """Write an MMU legacysurvey healpix file (atomically) from ``image_chw`` (n, 3, H, W) g,r,z float32
    nanomaggies, (H, W) = (160, 160) or (152, 152) (then zero-padded by 4 pixels a side), ``ra``/``dec`` (n,)
    degrees, ``object_id`` (n,) bytes or str ("BRICKNAME-OBJID").

    The builder's schema: image_array (n, 4, 160, 160) in ``band_order`` (galclip has no i band: DES-I is zeros),
    image_band (n, 4) fixed-length bytes b"des-g"..., image_ivar (n, 4, 160, 160) float32 (1 where there is data,
    0 in the i band and the padding), bit_mask (n, 160, 160) bool all True (clean), image_psf_fwhm (n, 4) arcsec
    (``psf_fwhm`` (n, 3) g,r,z, NaN when not given; NaN for i), image_scale (n, 4) = ``pixel_scale``.
    ``compression``: None (contiguous, fastest to read) or "gzip" (chunked, as the MMU's files are)."""
    cube = _pad_to_cutout(np.asarray(image_chw, np.float32))
    n = cube.shape[0]
    if cube.shape[1] != 3 or len(ra) != n or len(dec) != n or len(object_id) != n:
        raise ValueError(f"image_chw {np.shape(image_chw)}, ra {len(ra)}, dec {len(dec)}, object_id {len(object_id)}")
    letters = [_band_letter(b) for b in band_order]
    if sorted(letters) != sorted("griz"):
        raise ValueError(f"band_order {list(band_order)}: give g, r, i and z in some order")
    given = {"g": 0, "r": 1, "z": 2}
    has_data = np.zeros((MMU_CUTOUT, MMU_CUTOUT), np.float32)
    pad = (MMU_CUTOUT - np.shape(image_chw)[2]) // 2
    has_data[pad : MMU_CUTOUT - pad, pad : MMU_CUTOUT - pad] = 1
    psf = np.full((n, 3), np.nan, np.float32) if psf_fwhm is None else np.asarray(psf_fwhm, np.float32)
    ids = _as_ids(object_id)
    half = MMU_CUTOUT // 2  # gzip: one chunk per quarter band plane of a row, as the MMU's files have
    chunked = {"compression": compression, "chunks": (1, 1, half, half)} if compression else {}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        images = f.create_dataset("image_array", (n, 4, MMU_CUTOUT, MMU_CUTOUT), np.float32, **chunked)
        ivar = f.create_dataset("image_ivar", (n, 4, MMU_CUTOUT, MMU_CUTOUT), np.float32, **chunked)
        for j, letter in enumerate(letters):
            images[:, j] = cube[:, given[letter]] if letter in given else 0.0
            ivar[:, j] = has_data if letter in given else 0.0
        names = np.array([f"des-{b}".encode() for b in letters], dtype="S5")
        f.create_dataset("image_band", data=np.tile(names, (n, 1)))
        mask_chunks = {"compression": compression, "chunks": (1, half, half)} if compression else {}
        f.create_dataset("bit_mask", data=np.ones((n, MMU_CUTOUT, MMU_CUTOUT), bool), **mask_chunks)
        f.create_dataset(
            "image_psf_fwhm",
            data=np.stack([psf[:, given[b]] if b in given else np.full(n, np.nan, np.float32) for b in letters], 1),
        )
        f.create_dataset("image_scale", data=np.full((n, 4), pixel_scale, np.float32))
        f.create_dataset("object_id", data=ids.astype(f"S{max(16, ids.dtype.itemsize)}"))
        f.create_dataset("ra", data=np.asarray(ra, np.float64))
        f.create_dataset("dec", data=np.asarray(dec, np.float64))
    return Path(path)


def write_desi(
    path: str | Path,
    targetid: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    redshift: np.ndarray,
    zwarn: np.ndarray,
    mask: np.ndarray | None = None,
    zerr: np.ndarray | None = None,
    wavelength: np.ndarray | None = None,
    lsf_sigma: float | None = None,
) -> Path:
    """Write an MMU desi healpix file (atomically): ``targetid`` (n,) int64, ``ra``/``dec`` (n,) degrees, ``flux``
    and ``ivar`` (n, 7781) float32 on the DESI grid (1e-17 erg/s/cm²/Å), ``redshift`` (n,) Z, ``zwarn`` (n,) ZWARN.

    The builder's schema: spectrum_flux, spectrum_ivar, spectrum_lambda (n, 7781) float32 (``wavelength`` (7781,)
    Å, the DESI grid when None, repeated per row), spectrum_mask (n, 7781) bool, True for bad pixels: ``mask`` (n,
    7781) or'ed with ivar < 1e-6, as the builder sets it; object_id and TARGETID int64, ra, dec float64, Z, ZERR
    float64 (NaN when ``zerr`` is None), ZWARN int64; spectrum_lsf_sigma (n, 7781) pixels only when ``lsf_sigma``
    is given."""
    flux = np.asarray(flux, np.float32)
    ivar = np.asarray(ivar, np.float32)
    n = len(targetid)
    if flux.shape != (n, DESI_N_BINS) or ivar.shape != flux.shape:
        raise ValueError(f"flux {flux.shape} and ivar {ivar.shape}: give (n, {DESI_N_BINS}) each for {n} targetids")
    lam = (desi_wavelength() if wavelength is None else np.asarray(wavelength)).astype(np.float32)
    bad = ivar < BAD_IVAR if mask is None else (np.asarray(mask, bool) | (ivar < BAD_IVAR))
    ids = np.asarray(targetid, np.int64)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("spectrum_flux", data=flux)
        f.create_dataset("spectrum_ivar", data=ivar)
        f.create_dataset("spectrum_lambda", data=np.broadcast_to(lam, (n, lam.size)))
        f.create_dataset("spectrum_mask", data=bad)
        if lsf_sigma is not None:
            f.create_dataset("spectrum_lsf_sigma", data=np.full((n, DESI_N_BINS), lsf_sigma, np.float32))
        f.create_dataset("object_id", data=ids)
        f.create_dataset("TARGETID", data=ids)
        f.create_dataset("ra", data=np.asarray(ra, np.float64))
        f.create_dataset("dec", data=np.asarray(dec, np.float64))
        f.create_dataset("Z", data=np.asarray(redshift, np.float64))
        f.create_dataset("ZERR", data=np.full(n, np.nan) if zerr is None else np.asarray(zerr, np.float64))
        f.create_dataset("ZWARN", data=np.asarray(zwarn, np.int64))
    return Path(path)
