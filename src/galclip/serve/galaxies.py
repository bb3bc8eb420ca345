"""Pixels and fluxes of single galaxies, read on demand from the survey files by targetid.

At start the map targetid -> survey row is built from the files' ``targetid`` datasets only (8
bytes a galaxy); an image or a spectrum is then one row read from its HDF5 group. A survey is
never loaded whole (~60 GB at DESI scale). Rendered thumbnails are kept in an LRU cache.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from galclip.data.layout import desi_wavelength
from galclip.data.sources import open_survey
from galclip.errors import GalclipError
from galclip.targetids import lookup

logger = logging.getLogger(__name__)


class UnknownGalaxy(GalclipError):
    """A targetid that none of the files holds."""


class SurveyGalaxies:
    """Single rows of the survey files (any layout galclip reads), by targetid (read-only)."""

    def __init__(self, paths: list[str | Path], crop: int = 96, rgb: str = "lupton", cache_size: int = 4096):
        self.reader = open_survey(paths, require=())
        ids = self.reader.targetids()  # refuses duplicate targetids with their files
        order = np.argsort(ids, kind="stable")
        self._sorted_ids, self._rows = ids[order], order
        self.crop, self.rgb = crop, rgb
        self._lock = threading.Lock()  # one HDF5 read at a time: h5py serialises them anyway
        self._png: OrderedDict[int, bytes] = OrderedDict()
        self._cache_size = cache_size

    def __len__(self) -> int:
        return len(self._sorted_ids)

    def row(self, targetid: int) -> int:
        """The survey row of ``targetid``; :class:`UnknownGalaxy` when no file holds it."""
        row = int(lookup(self._sorted_ids, np.array([targetid]), self._rows)[0])
        if row < 0:
            raise UnknownGalaxy(f"targetid {targetid} is not in the survey files ({len(self)} galaxies)")
        return row

    def holds(self, targetids: np.ndarray) -> np.ndarray:
        """(n,) bool: which targetids the files hold."""
        return lookup(self._sorted_ids, targetids) >= 0

    def where(self, targetid: int) -> dict:
        """{"file", "group", "row"}: where the galaxy's row is stored."""
        row = self.row(targetid)
        for seg in getattr(self.reader, "segments", ()):  # AstroCLIP's files: the group and the row in it
            if seg.offset <= row < seg.offset + seg.n_rows:
                return {"file": str(seg.path), "group": seg.group or "/", "row": row - seg.offset}
        return {"file": self.reader.locate(row), "group": None, "row": row}

    def _read(self, targetid: int):
        from galclip.errors import DamagedDataError

        row = self.row(targetid)
        with self._lock:
            try:
                return self.reader.read(row, row + 1)
            except (OSError, RuntimeError, ValueError) as err:  # a damaged or truncated survey file
                raise DamagedDataError(
                    f"{self.reader.locate(row)}: targetid {targetid} cannot be read ({err}); the "
                    "survey file is damaged: restore it from a copy"
                ) from err

    def image_png(self, targetid: int) -> bytes:
        """The g,r,z cutout as an RGB PNG, with the crop and grz->RGB mapping the store's preprocessing used."""
        with self._lock:
            cached = self._png.get(targetid)
            if cached is not None:
                self._png.move_to_end(targetid)
                return cached
        from PIL import Image

        from galclip.data.preprocess import preprocess_images

        batch = self._read(targetid)
        if batch.image is None:
            raise UnknownGalaxy(f"targetid {targetid} has no image in the survey files (it has only a spectrum)")
        rgb = preprocess_images(batch.image, self.crop, self.rgb)[0].permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        png = buffer.getvalue()
        with self._lock:
            self._png[targetid] = png
            while len(self._png) > self._cache_size:
                self._png.popitem(last=False)
        return png

    def spectrum(self, targetid: int, bins: int) -> dict:
        """The spectrum on the DESI grid averaged into ``bins`` equal bins: {"wavelength", "flux"} lists."""
        batch = self._read(targetid)
        if batch.spectrum is None:
            raise UnknownGalaxy(f"targetid {targetid} has no spectrum in the survey files (it has only an image)")
        flux = batch.spectrum[0].astype(np.float64)
        wave = desi_wavelength()
        edges = np.linspace(0, len(flux), bins + 1).round().astype(int)
        counts = np.diff(edges)
        flux_b = np.add.reduceat(flux, edges[:-1]) / counts
        wave_b = np.add.reduceat(wave, edges[:-1]) / counts
        finite = np.isfinite(flux_b)
        return {
            "wavelength": np.round(wave_b, 2).tolist(),
            "flux": [float(round(v, 5)) if ok else None for v, ok in zip(flux_b, finite)],
        }

    def close(self) -> None:
        self.reader.close()
