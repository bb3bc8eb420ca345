"""Reader and writer for Legacy Survey viewer cutouts: one FITS file per galaxy (``legacysurvey-fits``).

The viewer's cutout service (``cutout.fits?ra=..&dec=..&layer=ls-dr9&pixscale=0.262&bands=grz``) writes a primary
HDU holding a (3, H, W) float32 cube of g, r, z fluxes in nanomaggies, the bands in the header (``BANDS`` = 'grz' and
``BAND0``..``BAND2``) and a TAN WCS centred on the requested position (``CRVAL1/2``) with the 0.262″ pixel scale in
its CD matrix.

A cube with more planes (DR10's ``bands=griz``) has its g, r and z planes taken; one lacking any of them is refused.
Rows come out in AstroCLIP's storage layout (:class:`galclip.data.survey.SurveyBatch`): the cube with its planes put
in g, r, z order, brought to 152 × 152 px, then transposed (C, H, W) -> (W, H, C). A cutout larger than 152 px is
centre-cropped (rows and columns ``H//2 - 76`` .. ``H//2 + 76``); one of 96..151 px is zero-padded to 152 with
``76 - H//2`` zero rows/columns before it, so its pixel ``H//2`` lands on pixel 76, the centre of AstroCLIP's
cutouts (a 96 px padded cutout still covers the 96 px crop AstroCLIP's image encoder sees). Files may differ in
size. Cutouts hold no redshift (NaN) and, unless the header has a ``TARGETID`` keyword, no id: they get
:func:`galclip.data.sources.position_targetid` of their centre.

Opening reads every file's primary header once (the 2880-byte blocks up to ``END``, without building an HDU list),
so listing a folder of 10,000 cutouts touches no pixels; :meth:`LegacySurveyCutouts.read` reads the pixel bytes
directly from where the header says they lie.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from astropy.io import fits

from galclip.data.layout import IMAGE_BANDS, IMAGE_SHAPE, PIXEL_SCALE_ARCSEC
from galclip.data.sources import ClosingSource, position_targetid, require_modalities
from galclip.data.survey import SurveyBatch
from galclip.errors import InputError

logger = logging.getLogger(__name__)

LAYOUT = "legacysurvey-fits"
FITS_MAGIC = b"SIMPLE  ="
GZIP_MAGIC = b"\x1f\x8b"
OUT_SIZE = IMAGE_SHAPE[0]  # 152: AstroCLIP's cutout side
MIN_SIZE = 96  # AstroCLIP's image encoder sees the central 96 px
SCALE_TOLERANCE = 0.01  # relative
BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
FIX_REQUEST = "request it from the viewer's cutout service with layer=ls-dr9, bands=grz, pixscale=0.262, size=152"


@dataclass(frozen=True)
class Cutout:
    """What one cutout file's header says: where its pixels lie and which galaxy it shows."""

    path: str
    size: int  # H == W, pixels
    n_planes: int
    planes: tuple[int, int, int]  # index of the g, r, z planes in the cube
    targetid: int
    ra: float  # degrees, the WCS centre
    dec: float
    data_offset: int  # byte offset of the primary HDU's pixels
    dtype: str  # big-endian numpy dtype of the stored pixels
    bscale: float
    bzero: float


def _open_raw(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading, gunzipped on the fly when it is gzip-compressed."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == GZIP_MAGIC else open(path, "rb")


def read_primary_header(path: str | Path) -> tuple[fits.Header, int] | None:
    """(primary header, byte offset of its data) of a FITS file, or None when ``path`` is not FITS. Reads only the
    header blocks (2880 bytes each)."""
    with _open_raw(path) as f:
        if f.read(len(FITS_MAGIC)) != FITS_MAGIC:
            return None
        f.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = fits.Header.fromfile(f, padding=True)
        return header, f.tell()


def header_bands(header: fits.Header) -> list[str]:
    """The bands of the cube's planes, lower case, in plane order: from ``BAND0``.. when every plane has one, else
    from ``BANDS`` ('grz'); empty when the header names none."""
    n = int(header.get("NAXIS3", 0) or 0)
    explicit = [header.get(f"BAND{i}") for i in range(n)]
    if n and all(isinstance(b, str) and b.strip() for b in explicit):
        return [b.strip().lower() for b in explicit]
    bands = header.get("BANDS")
    return list(bands.strip().lower()) if isinstance(bands, str) else []


def sniff(path: Path) -> bool:
    """Whether ``path`` is a Legacy Survey cutout: a FITS file whose primary HDU is a 3-d image cube (planes, H, W)
    with its bands in the header (BANDS or BAND0..). False, without raising, for HDF5, DESI coadds (empty primary
    HDU) and anything else."""
    try:
        found = read_primary_header(path)
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        return False
    if found is None:
        return False
    header = found[0]
    return header.get("NAXIS") == 3 and bool(header_bands(header))


def _refuse(path: str | Path, what: str, fix: str) -> InputError:
    return InputError(f"{path}: {what}; {fix}")


def _centre_and_scale(path: str | Path, header: fits.Header) -> tuple[float, float, np.ndarray]:
    """(ra, dec) in degrees of the cutout's centre pixel and its (2,) pixel scales in arcsec, from the TAN WCS."""
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_scales

    ctype = (str(header.get("CTYPE1", "")), str(header.get("CTYPE2", "")))
    if not (ctype[0].startswith("RA") and ctype[1].startswith("DEC")):
        raise _refuse(path, f"no RA/Dec WCS in the primary header (CTYPE1/2 = {ctype})", FIX_REQUEST)
    if _plain_linear(header):
        wcs = _plain_wcs(header)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2)
    w, h = int(header["NAXIS1"]), int(header["NAXIS2"])
    (ra, dec), *_ = wcs.all_pix2world([[(w - 1) / 2.0, (h - 1) / 2.0]], 0)
    return float(ra), float(dec), proj_plane_pixel_scales(wcs) * 3600.0


def _plain_linear(header: fits.Header) -> bool:
    """Whether the header's WCS is the cutout service's kind: CTYPE, CRVAL, CRPIX and a CD matrix or CDELT (with
    PC) only, no distortion (SIP, PV, ...) or rotation keywords, so it can be built without parsing the header."""
    if any(k.startswith(("A_", "B_", "AP_", "BP_", "PV", "PS", "DP", "DQ", "CROTA")) for k in header):
        return False
    has_scale = "CD1_1" in header or "CDELT1" in header
    return has_scale and all(k in header for k in ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2"))


def _plain_wcs(header: fits.Header):
    """The 2-d astropy WCS of a plain TAN header, set keyword by keyword (≈ 10× faster than ``WCS(header)``)."""
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = [str(header["CTYPE1"]), str(header["CTYPE2"])]
    wcs.wcs.crval = [float(header["CRVAL1"]), float(header["CRVAL2"])]
    wcs.wcs.crpix = [float(header["CRPIX1"]), float(header["CRPIX2"])]
    if "CD1_1" in header:
        wcs.wcs.cd = [[float(header.get(f"CD{i}_{j}", 0.0)) for j in (1, 2)] for i in (1, 2)]
    else:
        wcs.wcs.cdelt = [float(header["CDELT1"]), float(header.get("CDELT2", 1.0))]
        wcs.wcs.pc = [[float(header.get(f"PC{i}_{j}", float(i == j))) for j in (1, 2)] for i in (1, 2)]
    for key in ("LONPOLE", "LATPOLE"):
        if key in header:
            setattr(wcs.wcs, key.lower(), float(header[key]))
    wcs.wcs.set()
    return wcs


def describe_cutout(path: str | Path, header: fits.Header, data_offset: int) -> Cutout:
    """Check one cutout's header and say where its pixels lie; refused naming the file, what it holds and the fix."""
    naxis = header.get("NAXIS")
    if naxis != 3:
        shape = tuple(header.get(f"NAXIS{i}") for i in range(int(naxis or 0), 0, -1))
        raise _refuse(
            path, f"primary HDU holds a {naxis}-d array {shape}, expected a (3, H, W) g,r,z cube", FIX_REQUEST
        )
    n, h, w = (int(header[f"NAXIS{i}"]) for i in (3, 2, 1))
    bands = header_bands(header)
    if len(bands) != n:
        raise _refuse(path, f"the header names {len(bands)} band(s) ({''.join(bands)!r}) for {n} planes", FIX_REQUEST)
    missing = [b for b in IMAGE_BANDS if b not in bands]
    if missing:
        raise _refuse(
            path,
            f"bands {''.join(bands)!r}, lacking {', '.join(missing)} (galclip needs g, r and z)",
            "request the cutout with bands=grz",
        )
    if h != w:
        raise _refuse(path, f"{h} × {w} px, expected a square cutout", f"request it with size={OUT_SIZE}")
    if h < MIN_SIZE:
        raise _refuse(
            path,
            f"{h} × {w} px, expected at least {MIN_SIZE} (AstroCLIP's image encoder sees the central {MIN_SIZE} px)",
            f"request the cutout with size={OUT_SIZE}",
        )
    bitpix = int(header["BITPIX"])
    if bitpix not in BITPIX_DTYPES:
        raise _refuse(path, f"BITPIX = {bitpix} is not a FITS pixel type", "re-download the cutout")
    ra, dec, scales = _centre_and_scale(path, header)
    if np.any(np.abs(scales / PIXEL_SCALE_ARCSEC - 1.0) > SCALE_TOLERANCE):
        raise _refuse(
            path,
            f"pixel scale {'/'.join(f'{s:.3f}' for s in np.unique(scales.round(3)))}″/px, expected "
            f"{PIXEL_SCALE_ARCSEC}″ (the Legacy Survey's native scale)",
            f"request the cutout with pixscale={PIXEL_SCALE_ARCSEC}",
        )
    tid = header.get("TARGETID")
    targetid = int(tid) if isinstance(tid, (int, np.integer)) else int(position_targetid(np.array([ra]), [dec])[0])
    return Cutout(
        path=str(path),
        size=h,
        n_planes=n,
        planes=tuple(bands.index(b) for b in IMAGE_BANDS),
        targetid=targetid,
        ra=ra,
        dec=dec,
        data_offset=data_offset,
        dtype=BITPIX_DTYPES[bitpix],
        bscale=float(header.get("BSCALE", 1.0)),
        bzero=float(header.get("BZERO", 0.0)),
    )


def _raw_pixels(c: Cutout) -> bytes:
    """The stored bytes of a cutout's cube (n_planes · H · W pixels)."""
    n_bytes = c.n_planes * c.size * c.size * np.dtype(c.dtype).itemsize
    with _open_raw(c.path) as f:
        f.seek(c.data_offset)
        buf = f.read(n_bytes)
    if len(buf) != n_bytes:
        raise InputError(f"{c.path}: truncated ({len(buf)} of {n_bytes} pixel bytes); re-download the cutout")
    return buf


def read_cube(c: Cutout) -> np.ndarray:
    """(3, H, W) float32 g, r, z nanomaggies of one cutout; non-finite pixels set to 0 (as the viewer fills pixels
    outside the survey)."""
    cube = np.frombuffer(_raw_pixels(c), dtype=c.dtype).reshape(c.n_planes, c.size, c.size)
    cube = cube[list(c.planes)].astype(np.float32)
    if c.bscale != 1.0 or c.bzero != 0.0:
        cube = (cube * np.float32(c.bscale) + np.float32(c.bzero)).astype(np.float32)
    return np.nan_to_num(cube, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def to_storage(cube: np.ndarray) -> np.ndarray:
    """(3, H, W) g,r,z cube -> (152, 152, 3) float32 in AstroCLIP's layout (W, H, C): centre-cropped when larger
    than 152 px, zero-padded when smaller, the cube's pixel (H//2, W//2) landing on (76, 76)."""
    _, h, w = cube.shape
    half = OUT_SIZE // 2
    out = np.zeros((3, OUT_SIZE, OUT_SIZE), np.float32)
    src_y, dst_y = _window(h, half)
    src_x, dst_x = _window(w, half)
    out[:, dst_y, dst_x] = cube[:, src_y, src_x]
    return np.ascontiguousarray(out.transpose(2, 1, 0))


def _window(n: int, half: int) -> tuple[slice, slice]:
    """(source slice, destination slice) along one axis of ``n`` px bringing pixel n//2 to ``half``."""
    shift = half - n // 2  # destination index - source index
    lo, hi = max(0, -shift), min(n, 2 * half - shift)
    return slice(lo, hi), slice(lo + shift, hi + shift)


def open_source(files: list[Path], require: Sequence[str] = ()) -> LegacySurveyCutouts:
    """The reader of the cutouts ``files`` (the :mod:`galclip.data.sources` interface)."""
    return LegacySurveyCutouts(files, require=require)


class LegacySurveyCutouts(ClosingSource):
    """Lists and reads the galaxies of Legacy Survey cutout files, one galaxy (row) per file, in file order."""

    layout = LAYOUT
    modalities: tuple[str, ...] = ("image",)

    def __init__(self, files: Sequence[str | Path], require: Sequence[str] = ()):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise InputError("no Legacy Survey cutout files given; pass cutout FITS files or a folder of them")
        require_modalities(
            self.files, "Legacy Survey cutouts", self.modalities, require, "the DESI coadds (or another spectrum file)"
        )
        self.cutouts: tuple[Cutout, ...] = tuple(self._describe(p) for p in self.files)
        self.n_rows = len(self.cutouts)
        logger.debug("%d Legacy Survey cutouts listed", self.n_rows)

    @staticmethod
    def _describe(path: Path) -> Cutout:
        try:
            found = read_primary_header(path)
        except (OSError, EOFError, ValueError) as err:
            raise InputError(f"{path}: not a readable FITS file ({err}); re-download the cutout") from err
        if found is None:
            raise InputError(f"{path}: not a FITS file; pass Legacy Survey cutout FITS files")
        return describe_cutout(path, *found)

    def targetids(self) -> np.ndarray:
        """(n_rows,) int64: each header's TARGETID, else the position id of its centre. Duplicates refused."""
        ids = np.array([c.targetid for c in self.cutouts], np.int64)
        uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
        if np.any(counts > 1):
            dup = uniq[counts > 1][0]
            where = [c.path for c in self.cutouts if c.targetid == dup][:2]
            raise InputError(
                f"{int((counts > 1).sum())} duplicate targetid(s), e.g. {int(dup)} in both {where[0]} and {where[1]} "
                "(two cutouts of one galaxy or position); each galaxy must appear once: remove one of the files"
            )
        return ids

    def redshifts(self) -> np.ndarray:
        """(n_rows,) float32 NaN: cutouts carry no redshift."""
        return np.full(self.n_rows, np.nan, np.float32)

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec): (n_rows,) float64 degrees of each cutout's centre pixel (its WCS)."""
        return (
            np.array([c.ra for c in self.cutouts], np.float64),
            np.array([c.dec for c in self.cutouts], np.float64),
        )

    def read(self, start: int, stop: int) -> SurveyBatch:
        """Rows ``[start, stop)``: image (n, 152, 152, 3) float32, AstroCLIP's layout; spectrum None."""
        if not 0 <= start < stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) are outside the {self.n_rows} cutouts")
        part = self.cutouts[start:stop]
        return SurveyBatch(
            image=np.stack([to_storage(read_cube(c)) for c in part]),
            spectrum=None,
            redshift=np.full(len(part), np.nan, np.float32),
            targetid=np.array([c.targetid for c in part], np.int64),
            ra=np.array([c.ra for c in part], np.float64),
            dec=np.array([c.dec for c in part], np.float64),
        )

    def locate(self, row: int) -> str:
        """'file:PRIMARY' of row ``row``."""
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} is outside the {self.n_rows} cutouts")
        return f"{self.cutouts[row].path}:PRIMARY"

    def fingerprint(self) -> dict:
        """Cheap identity (no pixel read): {"layout", "files", "bytes", "n_rows"}."""
        return {
            "layout": LAYOUT,
            "files": [str(f.resolve()) for f in self.files],
            "bytes": [f.stat().st_size for f in self.files],
            "n_rows": self.n_rows,
        }

    def content(self) -> list[dict]:
        """One entry per cutout file, as :meth:`galclip.data.survey.SurveyReader.content`: {"file", "bytes",
        "n_rows" (1), "targetid_sha256" (of its int64 id), "sample_sha256" (of its stored pixel bytes)}. Each file is
        hashed whole, read as raw bytes (no FITS parsing): a few hundred kB per galaxy."""
        out = []
        for c in self.cutouts:
            path = Path(c.path)
            out.append(
                {
                    "file": str(path.resolve()),
                    "bytes": path.stat().st_size,
                    "n_rows": 1,
                    "targetid_sha256": hashlib.sha256(np.int64(c.targetid).tobytes()).hexdigest(),
                    "sample_sha256": hashlib.sha256(_raw_pixels(c)).hexdigest(),
                }
            )
        return out

    def close(self) -> None:
        """Nothing to close: every read opens and closes its file."""


def write_cutout(path: str | Path, image_chw: np.ndarray, ra: float, dec: float, targetid: int | None = None) -> None:
    """Write a cutout as the viewer's cutout service does: primary HDU (3, H, W) float32 g, r, z nanomaggies, BANDS
    'grz', BAND0..2, a TAN WCS centred on (ra, dec) degrees at 0.262″/px; ``targetid`` as a TARGETID keyword when
    given. Atomic (a temporary file, then a rename)."""
    from galclip.atomic import atomic_path

    cube = np.asarray(image_chw, np.float32)
    if cube.ndim != 3 or cube.shape[0] != 3:
        raise ValueError(f"image_chw has shape {cube.shape}, expected (3, H, W) g, r, z")
    _, h, w = cube.shape
    header = fits.Header()
    header["CTYPE1"] = "RA---TAN"
    header["CTYPE2"] = "DEC--TAN"
    header["CRVAL1"] = float(ra)
    header["CRVAL2"] = float(dec)
    header["CRPIX1"] = (w + 1) / 2.0
    header["CRPIX2"] = (h + 1) / 2.0
    header["CD1_1"] = -PIXEL_SCALE_ARCSEC / 3600.0
    header["CD1_2"] = 0.0
    header["CD2_1"] = 0.0
    header["CD2_2"] = PIXEL_SCALE_ARCSEC / 3600.0
    header["IMAGEW"] = float(w)
    header["IMAGEH"] = float(h)
    header["BANDS"] = "".join(IMAGE_BANDS)
    for i, band in enumerate(IMAGE_BANDS):
        header[f"BAND{i}"] = band
    header["BUNIT"] = "nanomaggy"
    if targetid is not None:
        header["TARGETID"] = int(targetid)
    with atomic_path(path) as tmp:
        fits.PrimaryHDU(cube, header=header).writeto(tmp)
