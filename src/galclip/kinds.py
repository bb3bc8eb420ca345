"""What a path on disk is, from file names and marks alone (no bulk read): so a mistake such as arguments
in the wrong order is answered with what was given and what was wanted.

Kinds: ``store`` (a galclip feature store), ``index`` (an index folder), ``heads`` (heads.pt, or a folder holding
it), ``train_state`` (heads' resume state), ``sweep``, ``report`` (an evaluate report folder), ``survey`` (an
AstroCLIP-layout HDF5 file, or a folder of them), ``provabgs`` (a PROVABGS-layout catalogue), ``catalogue``
(``galclip predict`` output), ``index_file`` / ``store_part`` (a file inside an index or a store), ``missing``,
``empty`` (an empty folder), ``folder`` and ``file`` (anything else).
"""

from __future__ import annotations

from pathlib import Path

DESCRIPTIONS = {
    "store": "a galclip feature store",
    "index": "a galclip index folder",
    "heads": "trained heads",
    "train_state": "a heads training state (train_state.pt, what --resume reads)",
    "sweep": "a galclip sweep folder",
    "report": "an evaluate report folder",
    "survey": "survey data (AstroCLIP HDF5, Legacy Survey cutout FITS, DESI coadd FITS or Multimodal Universe HDF5)",
    "provabgs": "a PROVABGS-layout catalogue",
    "catalogue": "a galclip predict catalogue",
    "index_file": "one file of a galclip index folder",
    "store_part": "a part of a galclip feature store",
    "missing": "nothing (no such path)",
    "empty": "an empty folder",
    "folder": "a folder galclip did not write",
    "file": "a file that is none of galclip's kinds",
}

FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fits.fz")  # Legacy Survey cutouts, DESI coadds
HDF5_SUFFIXES = (".h5", ".hdf5")
INDEX_MEMBERS = ("rows.npz", "map.npy", "image.faiss", "spectrum.faiss", "image.npy", "spectrum.npy")


def _is_provabgs_name(path: Path) -> bool:
    return "provabgs" in path.name.lower() or path.name == "catalogue.h5"


def _store_above(path: Path) -> Path | None:
    for parent in [path.parent, *path.parent.parents][:4]:
        if (parent / "zarr.json").exists() and not (parent.parent / "zarr.json").exists():
            return parent
    return None


def kind_of(path: str | Path) -> str:
    """The kind of ``path`` (one of :data:`DESCRIPTIONS`' keys)."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        if (path / "zarr.json").exists():
            return "store_part" if (path.parent / "zarr.json").exists() else "store"
        if (path / "index.json").exists():
            return "index"
        if (path / "sweep.csv").exists() or (path / "sweep.json").exists():
            return "sweep"
        if (path / "heads.pt").exists():
            return "heads"
        if (path / "metrics.json").exists() and (path / "report.html").exists():
            return "report"
        try:
            entries = list(path.iterdir())
        except OSError:
            return "folder"
        if not entries:
            return "empty"
        if any(_is_survey_name(e) for e in entries):
            return "survey"
        return "folder"
    if _store_above(path) is not None:
        return "store_part"
    if (path.parent / "index.json").exists() and (path.name in INDEX_MEMBERS or path.name == "index.json"):
        return "index_file"
    if path.name == "train_state.pt":
        return "train_state"
    if path.suffix == ".pt":
        return "heads"
    if path.suffix.lower() in HDF5_SUFFIXES:
        return "provabgs" if _is_provabgs_name(path) else "survey"
    from galclip.predict.catalogue import SUFFIXES, is_galclip_catalogue  # the catalogue format's own list and mark

    if path.suffix.lower() in SUFFIXES:
        if is_galclip_catalogue(path):
            return "catalogue"
    if path.name.lower().endswith(FITS_SUFFIXES) and _sniffs_as_survey(path):
        return "survey"
    return "file"


def _sniffs_as_survey(path: Path) -> bool:
    """Whether a FITS file is a Legacy Survey cutout or a DESI coadd, from its header (a user's other FITS is not)."""
    from galclip.data import desi_fits, legacysurvey_fits

    return legacysurvey_fits.sniff(path) or desi_fits.sniff(path)


def _is_survey_name(path: Path) -> bool:
    """Whether a folder entry looks like a survey file by its name (HDF5 other than a catalogue, or FITS)."""
    name = path.name.lower()
    return (path.suffix.lower() in HDF5_SUFFIXES and not _is_provabgs_name(path)) or (
        name.endswith(FITS_SUFFIXES) and not name.startswith(("redrock", "zbest"))
    )


def describe(path: str | Path) -> str:
    """``path`` in words, e.g. 'a galclip feature store' or 'one file of a galclip index folder (index/)'."""
    path = Path(path)
    kind = kind_of(path)
    text = DESCRIPTIONS[kind]
    if kind == "index_file":
        text += f" ({path.parent})"
    elif kind == "store_part":
        text += f" ({_store_above(path) if path.is_file() else path.parent})"
    return text


def container(path: str | Path) -> Path:
    """The store or index folder that a part of one belongs to (``path`` itself otherwise)."""
    path = Path(path)
    kind = kind_of(path)
    if kind == "index_file":
        return path.parent
    if kind == "store_part":
        return (_store_above(path) if path.is_file() else path.parent) or path
    return path
