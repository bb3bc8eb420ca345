"""One interface over every survey layout galclip reads, detected from each file's contents.

A *source* lists and reads galaxies of one layout (:class:`SurveySource`); :func:`open_survey` sniffs every file it
is given, opens one source per layout, and pairs an image-only source with a spectrum-only one on the sky
(:mod:`galclip.data.match`). Layouts, each in its own module with its reader, writer and ``sniff``:

- ``astroclip``: AstroCLIP's HDF5 (:mod:`galclip.data.survey`);
- ``legacysurvey-fits``: Legacy Survey viewer cutouts, a FITS file per galaxy (:mod:`galclip.data.legacysurvey_fits`);
- ``desi-fits``: desispec coadd / spectra FITS, with the redrock file beside each (:mod:`galclip.data.desi_fits`);
- ``mmu``: the Multimodal Universe's ``legacysurvey`` and ``desi`` HDF5 (:mod:`galclip.data.mmu`).

Every source yields rows in AstroCLIP's conventions (:class:`galclip.data.survey.SurveyBatch`): images (n, 152, 152, 3)
g,r,z nanomaggies transposed as AstroCLIP stores them, spectra (n, 7781) on the DESI grid, and where the format has
them the spectra's inverse variance (0 where masked) and RA/Dec.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from galclip.errors import InputError

# layout name -> module holding LAYOUT, sniff(path) -> bool and open_source(files, require) -> SurveySource
LAYOUT_MODULES = {
    "astroclip": "galclip.data.survey",
    "legacysurvey-fits": "galclip.data.legacysurvey_fits",
    "desi-fits": "galclip.data.desi_fits",
    "mmu": "galclip.data.mmu",
}
SURVEY_SUFFIXES = (".h5", ".hdf5", ".fits", ".fits.gz", ".fits.fz", ".fit")
DEFAULT_MATCH_RADIUS_ARCSEC = 1.0
POSITION_ID_SCALE = 100_000  # position ids resolve 1e-5 deg (0.036″)


@runtime_checkable
class SurveySource(Protocol):
    """What every layout's reader offers. Rows are numbered 0..n_rows-1 in the source's own order."""

    layout: str
    files: list[Path]
    n_rows: int
    modalities: tuple[str, ...]  # the modalities every row holds

    def targetids(self) -> np.ndarray:
        """(n_rows,) int64, unique (duplicates refused, naming the files); :func:`position_targetid` where the
        format names no TARGETID."""

    def redshifts(self) -> np.ndarray:
        """(n_rows,) float32 survey redshifts, NaN where none."""

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec): (n_rows,) float64 degrees each, NaN where unknown."""

    def read(self, start: int, stop: int):
        """Rows ``[start, stop)`` as a :class:`galclip.data.survey.SurveyBatch`."""

    def locate(self, row: int) -> str:
        """Where row ``row`` is stored, for messages: 'file:hdu-or-group[index]'."""

    def fingerprint(self) -> dict:
        """Cheap identity (no bulk read): {"files", "bytes", "n_rows", ...}."""

    def content(self) -> list[dict]:
        """Per file {"file", "bytes", "n_rows", "targetid_sha256", "sample_sha256"}: see
        :meth:`galclip.data.survey.SurveyReader.content`."""

    def close(self) -> None: ...


class ClosingSource:
    """What every reader shares: ``with source:`` closes its file handles at the end."""

    def close(self) -> None:  # pragma: no cover - every reader defines its own
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def require_modalities(
    files: Sequence[Path], what: str, held: tuple[str, ...], require: Sequence[str], other: str
) -> None:
    """Refuse a source of ``what`` (e.g. "Legacy Survey cutouts"), which holds ``held``, where ``require`` is
    needed: one line naming its first file, what it lacks, and ``other`` (the files that hold the rest)."""
    lacking = [m for m in require if m not in held]
    if lacking:
        plural = {"image": "images", "spectrum": "spectra"}
        alone = plural[held[0]] if len(held) == 1 else "them"
        raise InputError(
            f"{files[0]}{f' (and {len(files) - 1} more)' if len(files) > 1 else ''}: {what} hold "
            f"{' and '.join(plural[m] for m in held)} only, not {' or '.join(plural[m] for m in lacking)}; pass "
            f"{other} too, and galclip pairs them, or use 'galclip predict' for {alone} alone"
        )


def iter_batches(source: SurveySource, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator:
    """Yield ``(first_row, batch)`` over rows ``[start, stop)`` of any source, in order."""
    stop = source.n_rows if stop is None else stop
    for lo in range(start, stop, batch_size):
        yield lo, source.read(lo, min(lo + batch_size, stop))


def position_targetid(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Ids for galaxies whose files name no TARGETID: (n,) int64, negative (DESI TARGETIDs are positive), a pure
    function of the position rounded to 1e-5 deg: -(round(ra·1e5)·18000001 + round((dec + 90)·1e5)) - 1."""
    ra_i = np.round(np.mod(np.asarray(ra, np.float64), 360.0) * POSITION_ID_SCALE).astype(np.int64)
    dec_i = np.round((np.asarray(dec, np.float64) + 90.0) * POSITION_ID_SCALE).astype(np.int64)
    return -(ra_i * (180 * POSITION_ID_SCALE + 1) + dec_i) - 1


def is_position_targetid(targetid: np.ndarray) -> np.ndarray:
    """(n,) bool: which ids are :func:`position_targetid` ids rather than a survey's own."""
    return np.asarray(targetid) < 0


def _layout_module(layout: str):
    return importlib.import_module(LAYOUT_MODULES[layout])


def expand_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Files named, and the survey files inside folders named (sorted; catalogues and redrock files left out)."""
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(  # a dot name is a writer's temporary file (galclip.atomic), never a survey file
                f
                for f in p.iterdir()
                if f.is_file() and not f.name.startswith(".") and f.name.lower().endswith(SURVEY_SUFFIXES)
            )
            found = [f for f in found if not is_companion(f)]
            if not found:
                raise InputError(
                    f"{p}: no survey files in this folder (looked for {', '.join(SURVEY_SUFFIXES)}); pass AstroCLIP "
                    "HDF5, Legacy Survey cutout FITS, DESI coadd FITS or Multimodal Universe HDF5 files"
                )
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return files


def is_companion(path: Path) -> bool:
    """Files that sit beside survey files but are not survey files: catalogues, redrock/zbest redshifts."""
    name = path.name.lower()
    return "provabgs" in name or name == "catalogue.h5" or name.startswith(("redrock", "zbest", "zall"))


def detect_layout(path: Path) -> str:
    """The layout of one file, from its contents (not its name); refused naming the file when none fits."""
    for layout in LAYOUT_MODULES:
        if _layout_module(layout).sniff(path):
            return layout
    if path.suffix.lower() in (".h5", ".hdf5"):  # AstroCLIP's reader names what the file lacks, or why it is unreadable
        _layout_module("astroclip").SurveyReader([path], require=()).close()
    raise InputError(
        f"{path}: not a survey file galclip reads (tried {', '.join(LAYOUT_MODULES)}); see docs/data.md for the "
        "layouts and what each must hold"
    )


def group_by_layout(paths: str | Path | Sequence[str | Path]) -> dict[str, list[Path]]:
    """The survey files among ``paths`` grouped by layout, in the order layouts first appear; the Multimodal
    Universe's image and spectrum files are two groups ("mmu:legacysurvey", "mmu:desi")."""
    by_layout: dict[str, list[Path]] = {}
    for f in expand_paths(paths):
        layout = detect_layout(f)
        if layout == "mmu":
            layout = f"mmu:{_layout_module('mmu').kind(f)}"
        by_layout.setdefault(layout, []).append(f)
    return by_layout


def open_sources(paths: str | Path | Sequence[str | Path], require: Sequence[str] = ()) -> list[SurveySource]:
    """One source per layout among ``paths`` (files or folders), in the order layouts first appear; each must hold
    the modalities ``require``."""
    return [
        _layout_module(layout.split(":")[0]).open_source(files, require)
        for layout, files in group_by_layout(paths).items()
    ]


def open_survey(
    paths: str | Path | Sequence[str | Path],
    require: Sequence[str] = ("image", "spectrum"),
    match_radius_arcsec: float = DEFAULT_MATCH_RADIUS_ARCSEC,
) -> SurveySource:
    """The galaxies of ``paths`` as one source holding at least the modalities ``require``.

    Files of one layout make one source. An image-only source and a spectrum-only one (cutouts and coadds, say)
    are paired by TARGETID where both sides have one, else by position within ``match_radius_arcsec``
    (:class:`galclip.data.match.MatchedSurvey`)."""
    if match_radius_arcsec <= 0:
        raise InputError(f"--match-radius {match_radius_arcsec}: must be > 0 arcsec (the default is 1)")
    groups = group_by_layout(paths)
    if len(groups) == 1:  # the layout's own reader names what a file lacks
        ((layout, files),) = groups.items()
        return _layout_module(layout.split(":")[0]).open_source(files, require)
    sources = [_layout_module(layout.split(":")[0]).open_source(files, ()) for layout, files in groups.items()]
    images = [s for s in sources if s.modalities == ("image",)]
    spectra = [s for s in sources if s.modalities == ("spectrum",)]
    if len(images) != 1 or len(spectra) != 1 or len(sources) != 2:
        held = "; ".join(f"{s.layout}: {s.files[0]} ({'+'.join(s.modalities)})" for s in sources)
        for s in sources:
            s.close()
        raise InputError(
            f"these files are of {len(sources)} layouts ({held}); galclip reads one layout at a time, or one "
            "image-only layout with one spectrum-only layout, which it pairs on the sky"
        )
    from galclip.data.match import MatchedSurvey

    return MatchedSurvey(images[0], spectra[0], match_radius_arcsec)
