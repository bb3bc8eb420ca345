"""The mock survey in the layouts astronomers have: the same galaxies, pixel for pixel, in each.

``galclip mock --layout L`` writes the AstroCLIP-layout mock first (``survey.h5``, ``provabgs.h5``), then, for a
layout other than ``astroclip``, converts its galaxies and removes ``survey.h5``:

- ``legacysurvey-fits``: ``cutouts/`` (one viewer-style FITS per galaxy, no TARGETID: paired on the sky) and
  ``coadds/`` (desispec coadds with their redrock files), the pair an astronomer downloads;
- ``desi-fits``: ``coadds/`` and ``images.h5`` (the AstroCLIP layout, images only: paired by TARGETID);
- ``mmu``: ``mmu/legacysurvey.h5`` and ``mmu/desi.h5`` in the Multimodal Universe's schema (paired on the sky).

The mock carries no per-pixel noise estimate in its survey file, so the coadds and MMU spectra get inverse variance 1
everywhere: nothing is masked, and every layout gives the same features as the AstroCLIP file
(``tests/test_layouts.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from galclip.atomic import atomic_dir
from galclip.data.survey import SurveyReader
from galclip.errors import InputError

logger = logging.getLogger(__name__)

LAYOUTS = ("astroclip", "legacysurvey-fits", "desi-fits", "mmu")
# layout -> what it writes beside provabgs.h5, in the order 'galclip extract' takes them
LAYOUT_DATA = {
    "astroclip": ("survey.h5",),
    "legacysurvey-fits": ("cutouts", "coadds"),
    "desi-fits": ("coadds", "images.h5"),
    "mmu": ("mmu/legacysurvey.h5", "mmu/desi.h5"),
}
COADD_TARGETS = 500  # galaxies per coadd file, as a DESI tile-petal holds
BLOCK = 256  # survey rows converted at a time


def generate_in_layout(config, out_dir: str | Path, layout: str, overwrite: bool = False, progress=None) -> dict:
    """``generate_mock`` (``config``: a :class:`galclip.config.MockConfig` of pairs) into ``out_dir``, then, for a
    layout other than ``astroclip``, its galaxies converted (:func:`convert`) and ``survey.h5`` removed. An earlier
    mock's files in that layout are replaced only with ``overwrite``; a user's never. Returns the mock's summary
    with "layout" and "data" (the DATA arguments of 'galclip extract')."""
    import shutil

    from galclip.data.mock.survey import SURVEY_FILE, generate_mock
    from galclip.outputs import owner

    out = Path(out_dir)
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    taken = [p for p in layout_paths(out, layout) if p.exists()] if layout != "astroclip" else []
    if taken and not (overwrite and owner(out) == "mock"):
        raise InputError(
            f"{taken[0]}: already exists{' (an earlier galclip mock)' if owner(out) == 'mock' else ''}; choose "
            "another --out" + (", or pass --overwrite to replace it" if owner(out) == "mock" else "")
        )
    summary = generate_mock(config, out, progress, overwrite=overwrite or bool(taken))
    if layout != "astroclip":
        for p in taken:  # an earlier mock's, in a folder the mock owns
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        mmu = out / "mmu"
        if mmu.is_dir() and not any(mmu.iterdir()):
            mmu.rmdir()
        convert(out / SURVEY_FILE, out, layout)
        (out / SURVEY_FILE).unlink()
        summary["survey"] = None
    summary.update(layout=layout, data=[str(p) for p in layout_paths(out, layout)])
    return summary


def layout_paths(out: Path, layout: str) -> list[Path]:
    """The DATA arguments of 'galclip extract' for a mock written in ``layout`` into ``out``."""
    return [out / name for name in LAYOUT_DATA[layout]]


def convert(survey: Path, out: Path, layout: str) -> list[Path]:
    """Write the galaxies of the AstroCLIP-layout ``survey`` (pairs with 'ra'/'dec', as the mock writes) into
    ``out`` in ``layout``; returns the paths written (``layout_paths``). Each folder is written whole or not at all."""
    if layout not in LAYOUTS:
        raise InputError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if layout == "astroclip":
        return layout_paths(out, layout)
    taken = [p for p in layout_paths(out, layout) if p.exists()]
    if taken:
        raise InputError(f"{taken[0]}: already exists; choose another --out, or pass --overwrite")
    with SurveyReader(survey) as reader:
        if layout == "legacysurvey-fits":
            _cutouts(reader, out / "cutouts")
            _coadds(reader, out / "coadds")
        elif layout == "desi-fits":
            _coadds(reader, out / "coadds")
            _images_h5(reader, out / "images.h5")
        else:
            _mmu(reader, out / "mmu")
    logger.info("mock survey written in the %s layout -> %s", layout, ", ".join(map(str, layout_paths(out, layout))))
    return layout_paths(out, layout)


def _blocks(reader: SurveyReader):
    for lo in range(0, reader.n_rows, BLOCK):
        yield lo, reader.read(lo, min(lo + BLOCK, reader.n_rows))


def _cutouts(reader: SurveyReader, folder: Path) -> None:
    from galclip.data.legacysurvey_fits import write_cutout

    with atomic_dir(folder) as tmp:
        for _, batch in _blocks(reader):
            for i in range(len(batch.targetid)):
                cube = np.ascontiguousarray(batch.image[i].transpose(2, 1, 0))  # AstroCLIP's (W, H, C) -> (C, H, W)
                write_cutout(
                    tmp / f"cutout-{int(batch.targetid[i])}.fits", cube, float(batch.ra[i]), float(batch.dec[i])
                )


def _coadds(reader: SurveyReader, folder: Path) -> None:
    from galclip.data.desi_fits import write_coadd

    with atomic_dir(folder) as tmp:
        for lo in range(0, reader.n_rows, COADD_TARGETS):
            b = reader.read(lo, min(lo + COADD_TARGETS, reader.n_rows))
            write_coadd(
                tmp / f"coadd-mock-{lo // COADD_TARGETS:05d}.fits",
                b.targetid,
                b.ra,
                b.dec,
                b.spectrum,
                np.ones_like(b.spectrum),
                b.redshift,
                np.zeros(len(b.targetid), np.int64),
            )


def _images_h5(reader: SurveyReader, path: Path) -> None:
    import h5py

    from galclip.atomic import atomic_path

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["generator"] = "galclip mock (images only)"
        image = f.create_dataset("image", (reader.n_rows, 152, 152, 3), np.float32, chunks=(16, 152, 152, 3))
        ids = f.create_dataset("targetid", (reader.n_rows,), np.int64)
        for lo, b in _blocks(reader):
            image[lo : lo + len(b.targetid)] = b.image
            ids[lo : lo + len(b.targetid)] = b.targetid


def _mmu(reader: SurveyReader, folder: Path) -> None:
    """Both MMU files (each written atomically by its writer) into ``folder``; the mock's sizes fit in memory."""
    from galclip.data.mmu import write_desi, write_legacysurvey

    parts = [reader.read(lo, min(lo + BLOCK, reader.n_rows)) for lo in range(0, reader.n_rows, BLOCK)]
    cat = lambda name: np.concatenate([getattr(b, name) for b in parts])
    folder.mkdir(parents=True, exist_ok=True)
    ra, dec = cat("ra"), cat("dec")
    write_legacysurvey(
        folder / "legacysurvey.h5",
        np.ascontiguousarray(cat("image").transpose(0, 3, 2, 1)),  # AstroCLIP's (W, H, C) -> (C, H, W)
        ra,
        dec,
        np.array([f"mock-{i}" for i in range(len(ra))]),
    )
    spectra = cat("spectrum")
    zwarn = np.zeros(len(ra), np.int64)
    write_desi(folder / "desi.h5", cat("targetid"), ra, dec, spectra, np.ones_like(spectra), cat("redshift"), zwarn)
