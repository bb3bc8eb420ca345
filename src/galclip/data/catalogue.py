"""PROVABGS-layout catalogue: read, apply the AstroCLIP cuts, join labels onto survey rows.

Columns (DESI EDR VAC ``BGS_ANY_full.provabgs.sv3.v0.hdf5``): TARGETID, Z_HP,
PROVABGS_LOGMSTAR_BF, MAG_G, MAG_R, MAG_Z. The file may hold the columns as root datasets
or as one compound (table) dataset, as astropy writes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from galclip.data.layout import CATALOGUE_COLUMNS
from galclip.errors import InputError
from galclip.targetids import lookup

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Labels:
    """Catalogue labels joined onto survey rows: (n,) float32 each, NaN where absent or cut."""

    redshift: np.ndarray
    log_mstar: np.ndarray
    n_catalogue: int
    n_after_cuts: int
    n_matched: int


def read_catalogue(path: str | Path) -> dict[str, np.ndarray]:
    """Read the six PROVABGS columns: name -> (n,) array."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 catalogue ({err})") from err
    with f:
        columns: dict[str, np.ndarray] = {}
        if all(c in f and isinstance(f[c], h5py.Dataset) for c in CATALOGUE_COLUMNS):
            columns = {c: f[c][:] for c in CATALOGUE_COLUMNS}
        else:
            tables = [k for k in f.keys() if isinstance(f[k], h5py.Dataset) and f[k].dtype.names]
            for name in tables:
                fields = f[name].dtype.names
                if all(c in fields for c in CATALOGUE_COLUMNS):
                    data = f[name][:]
                    columns = {c: np.asarray(data[c]) for c in CATALOGUE_COLUMNS}
                    break
            if not columns:
                present = sorted(f.keys()) + [f"{t}.{n}" for t in tables for n in f[t].dtype.names]
                missing = [
                    c for c in CATALOGUE_COLUMNS if c not in present and not any(p.endswith("." + c) for p in present)
                ]
                raise InputError(
                    f"{path}: catalogue lacks column(s) {missing}; a PROVABGS catalogue needs "
                    f"{list(CATALOGUE_COLUMNS)} (found {present[:20]})"
                )
    lengths = {c: len(v) for c, v in columns.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"{path}: catalogue columns have different lengths {lengths}")
    return columns


def apply_cuts(columns: dict[str, np.ndarray]) -> np.ndarray:
    """AstroCLIP's catalogue cuts: (n,) bool, PROVABGS_LOGMSTAR_BF > 0 and MAG_G, MAG_R, MAG_Z > 0."""
    keep = np.asarray(columns["PROVABGS_LOGMSTAR_BF"]) > 0
    for band in ("MAG_G", "MAG_R", "MAG_Z"):
        keep &= np.asarray(columns[band]) > 0
    keep &= np.isfinite(np.asarray(columns["Z_HP"], dtype=np.float64))
    return keep


def join_columns(
    targetid: np.ndarray, path: str | Path, names: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], Labels]:
    """Catalogue columns ``names`` for survey rows (n,) int64, after the cuts: (name -> (n,) float64, NaN where a
    galaxy has no row, and the match counts as :class:`Labels` with the redshift and log M* labels)."""
    columns = read_catalogue(path)
    keep = apply_cuts(columns)
    cat_ids = np.asarray(columns["TARGETID"]).astype(np.int64)[keep]
    uniq, counts = np.unique(cat_ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise InputError(
            f"{path}: {dup.size} targetid(s) appear more than once after the cuts, e.g. {dup[:5].tolist()}; "
            "keep one row per TARGETID"
        )
    if keep.sum() == 0:
        raise InputError(
            f"{path}: no catalogue row passes the cuts (PROVABGS_LOGMSTAR_BF > 0 and MAG_G, MAG_R, MAG_Z > 0); "
            "check the column units and that this is a PROVABGS catalogue"
        )
    order = np.argsort(cat_ids)
    pos = lookup(cat_ids[order], targetid, order)
    hit = pos >= 0

    def joined(name: str, dtype) -> np.ndarray:
        out = np.full(len(targetid), np.nan, dtype)
        out[hit] = np.asarray(columns[name])[keep][pos[hit]]
        return out

    labels = Labels(
        joined("Z_HP", np.float32),
        joined("PROVABGS_LOGMSTAR_BF", np.float32),
        len(keep),
        int(keep.sum()),
        int(hit.sum()),
    )
    if labels.n_matched == 0 and len(targetid):
        raise InputError(
            f"{path}: none of the {len(targetid)} survey targetids (e.g. {int(targetid[0])}) is among its "
            f"{labels.n_after_cuts} rows after the cuts (e.g. TARGETID {int(cat_ids[0])}); is this the catalogue "
            "of this survey? Pass the matching PROVABGS file, or leave out --catalogue to extract without labels"
        )
    return {name: joined(name, np.float64) for name in names}, labels


def join_labels(targetid: np.ndarray, path: str | Path) -> Labels:
    """Labels for survey rows (n,) int64 from the catalogue at ``path``, after the cuts."""
    _, labels = join_columns(targetid, path, ())
    logger.info(
        "catalogue %s: %d rows, %d after cuts, %d matched to %d survey pairs",
        path,
        labels.n_catalogue,
        labels.n_after_cuts,
        labels.n_matched,
        len(targetid),
    )
    return labels


def photometry_features(targetid: np.ndarray, path: str | Path) -> np.ndarray:
    """The classic photo-z inputs of survey rows (n,): (n, 3) float64 r, g - r, r - z from the catalogue's
    MAG_G, MAG_R, MAG_Z after the cuts; NaN rows where a galaxy has no catalogue row."""
    mags, _ = join_columns(targetid, path, ("MAG_G", "MAG_R", "MAG_Z"))
    g, r, z = mags["MAG_G"], mags["MAG_R"], mags["MAG_Z"]
    return np.stack([r, g - r, r - z], axis=1)
