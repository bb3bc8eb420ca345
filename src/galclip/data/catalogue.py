"""PROVABGS-layout catalogue: read, apply the AstroCLIP cuts, join labels onto survey rows.

Columns (DESI EDR VAC ``BGS_ANY_full.provabgs.sv3.v0.hdf5``): TARGETID, Z_HP, PROVABGS_LOGMSTAR_BF, MAG_G, MAG_R,
MAG_Z, and, where the file has them, the other PROVABGS properties (``layout.PROPERTY_COLUMNS``: mass-weighted
metallicity and age, the SFR averaged over the last Gyr, as the VAC or the Multimodal Universe spells them) and RA,
DEC. The file may hold the columns as root datasets or as one compound (table) dataset, as astropy writes it.

Labels (``vocabulary.PROPERTIES``): redshift = Z_HP; log_mstar = PROVABGS_LOGMSTAR_BF; log_metallicity = log10 Z_MW;
age = TAGE_MW (Gyr); log_ssfr = log10 AVGSFR − log_mstar (yr⁻¹; AstroCLIP's cross-match subtracts log Z_MW here, a
bug not copied). ``--label NAME=COLUMN`` adds any other numeric column.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from galclip.data.layout import CATALOGUE_ALIASES, CATALOGUE_COLUMNS, PROPERTY_COLUMNS
from galclip.errors import InputError
from galclip.targetids import lookup
from galclip.vocabulary import LABELS, PROPERTIES

logger = logging.getLogger(__name__)

LABEL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Labels:
    """Catalogue labels joined onto survey rows: label -> (n,) float32, NaN where absent or cut; ``sources``: label ->
    the catalogue column(s) it comes from."""

    values: dict[str, np.ndarray]
    sources: dict[str, str]
    n_catalogue: int
    n_after_cuts: int
    n_matched: int

    @property
    def redshift(self) -> np.ndarray:
        return self.values["redshift"]

    @property
    def log_mstar(self) -> np.ndarray:
        return self.values["log_mstar"]


@dataclass
class _Columns:
    """The columns of one catalogue file, read lazily: name -> h5py dataset or compound field."""

    path: Path
    handle: h5py.File
    root: dict = field(default_factory=dict)
    table: h5py.Dataset | None = None

    def names(self) -> list[str]:
        return sorted(self.root) + (list(self.table.dtype.names) if self.table is not None else [])

    def resolve(self, name: str) -> str | None:
        """The column the file spells ``name`` as (itself or an alias), or None."""
        for candidate in (name, *CATALOGUE_ALIASES.get(name, ())):
            if candidate in self.root or (self.table is not None and candidate in self.table.dtype.names):
                return candidate
        return None

    def read(self, name: str) -> np.ndarray:
        data = self.root[name][:] if name in self.root else np.asarray(self.table[name])
        if data.ndim == 2:  # posterior samples per galaxy: their median
            data = np.median(data, axis=1)
        return data


def _open_columns(path: Path) -> _Columns:
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 catalogue ({err})") from err
    root = {k: f[k] for k in f.keys() if isinstance(f[k], h5py.Dataset) and f[k].dtype.names is None}
    cols = _Columns(path, f, root)
    if not all(cols.resolve(c) for c in CATALOGUE_COLUMNS):
        for name in (k for k in f.keys() if isinstance(f[k], h5py.Dataset) and f[k].dtype.names):
            candidate = _Columns(path, f, {}, f[name])
            if all(candidate.resolve(c) for c in CATALOGUE_COLUMNS):
                return candidate
    return cols


def read_catalogue(path: str | Path, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read the six PROVABGS columns, each property column (``layout.PROPERTY_COLUMNS``) the file has, RA and DEC if
    present, and the columns ``extra`` (refused when absent): name -> (n,) array, under the names the VAC uses for
    the six and as the file spells them for the others."""
    path = Path(path)
    cols = _open_columns(path)
    with cols.handle:
        missing = [c for c in CATALOGUE_COLUMNS if not cols.resolve(c)]
        if missing:
            raise InputError(
                f"{path}: catalogue lacks column(s) {missing}; a PROVABGS catalogue needs "
                f"{list(CATALOGUE_COLUMNS)} (found {cols.names()[:20]})"
            )
        out = {c: cols.read(cols.resolve(c)) for c in CATALOGUE_COLUMNS}
        for spellings in PROPERTY_COLUMNS.values():
            found = next((s for s in spellings if cols.resolve(s)), None)
            if found:
                out[found] = cols.read(found)
        for name in ("RA", "DEC"):
            if cols.resolve(name):
                out[name] = cols.read(name)
        for name in extra:
            if not cols.resolve(name):
                raise InputError(
                    f"{path}: has no column {name!r} (--label ...={name}); its columns are {cols.names()[:40]}"
                )
            out[name] = cols.read(name)
    lengths = {c: len(v) for c, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise InputError(f"{path}: catalogue columns have different lengths {lengths}")
    return out


def apply_cuts(columns: dict[str, np.ndarray]) -> np.ndarray:
    """AstroCLIP's catalogue cuts: (n,) bool, PROVABGS_LOGMSTAR_BF > 0 and MAG_G, MAG_R, MAG_Z > 0."""
    keep = np.asarray(columns["PROVABGS_LOGMSTAR_BF"]) > 0
    for band in ("MAG_G", "MAG_R", "MAG_Z"):
        keep &= np.asarray(columns[band]) > 0
    keep &= np.isfinite(np.asarray(columns["Z_HP"], dtype=np.float64))
    return keep


def parse_label_options(options: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--label NAME=COLUMN`` options -> {name: column}; refused, naming the option and the fix, when malformed or
    when NAME is one of the PROVABGS labels galclip already derives."""
    out: dict[str, str] = {}
    for option in options:
        name, sep, column = option.partition("=")
        name, column = name.strip(), column.strip()
        if not sep or not column or not LABEL_NAME.match(name):
            raise InputError(
                f"--label {option!r}: expected NAME=COLUMN, NAME lower-case letters, digits and _ (e.g. "
                "--label dn4000=DN4000)"
            )
        if name in PROPERTIES or name in out:
            how = "derived" if name in PROPERTIES else "given"
            raise InputError(f"--label {option!r}: the label {name!r} is already {how}; choose another NAME")
        out[name] = column
    return out


def property_values(columns: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The PROVABGS labels of catalogue rows (see the module docstring): label -> (n,) float64 (NaN where not
    finite or not positive before a log), and label -> the columns it comes from."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_mstar = np.asarray(columns["PROVABGS_LOGMSTAR_BF"], np.float64)
        values = {"redshift": np.asarray(columns["Z_HP"], np.float64), "log_mstar": log_mstar}
        sources = {"redshift": "Z_HP", "log_mstar": "PROVABGS_LOGMSTAR_BF"}

        def spelling(key: str) -> str | None:  # the property's column as read_catalogue found it
            return next((s for s in PROPERTY_COLUMNS[key] if s in columns), None)

        def positive_log(column: str) -> np.ndarray:
            x = np.asarray(columns[column], np.float64)
            return np.where(x > 0, np.log10(np.where(x > 0, x, 1.0)), np.nan)

        if z_mw := spelling("Z_MW"):
            values["log_metallicity"] = positive_log(z_mw)
            sources["log_metallicity"] = f"log10 {z_mw}"
        if tage := spelling("TAGE_MW"):
            values["age"] = np.asarray(columns[tage], np.float64)
            sources["age"] = tage
        if sfr := spelling("AVGSFR"):
            values["log_ssfr"] = positive_log(sfr) - log_mstar
            sources["log_ssfr"] = f"log10 {sfr} - PROVABGS_LOGMSTAR_BF"
    return values, sources


def _numeric(path: Path, option: str, column: str, data: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(data, np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{path}: column {column!r} (--label {option}={column}) is not numeric (dtype {data.dtype}); "
            "choose a numeric column"
        ) from err


def match_positions(
    path: Path,
    targetid: np.ndarray,
    positions: tuple[np.ndarray, np.ndarray],
    cat_ra: np.ndarray,
    cat_dec: np.ndarray,
    radius_arcsec: float,
) -> np.ndarray:
    """For survey rows with a position id (a cutout names no TARGETID): the catalogue row (after the cuts) within
    ``radius_arcsec`` of each, -1 where none and for the other rows; (n,) int64. Two catalogue rows within the
    radius of one galaxy, or one catalogue row near two, is refused by name: no row is picked by guess."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    from galclip.data.sources import is_position_targetid

    out = np.full(len(targetid), -1, np.int64)
    ra, dec = (np.asarray(a, np.float64) for a in positions)
    rows = np.flatnonzero(is_position_targetid(targetid) & np.isfinite(ra) & np.isfinite(dec))
    known = np.flatnonzero(np.isfinite(cat_ra) & np.isfinite(cat_dec))
    if not rows.size or not known.size:
        return out
    mine = SkyCoord(ra[rows] * u.deg, dec[rows] * u.deg)
    theirs = SkyCoord(cat_ra[known] * u.deg, cat_dec[known] * u.deg)
    i, j, sep, _ = mine.search_around_sky(theirs, radius_arcsec * u.arcsec)  # i: catalogue side, j: survey side
    for side, index in (("galaxy", j), ("catalogue row", i)):
        values, counts = np.unique(index, return_counts=True)
        if (counts > 1).any():
            first = values[counts > 1][0]
            which = np.flatnonzero(index == first)
            at = rows[j[which[0]]] if side == "galaxy" else rows[j[which]]
            raise InputError(
                f"{path}: {int((counts > 1).sum())} {side}(s) with two or more counterparts within "
                f"--match-radius {radius_arcsec:g}″ (e.g. targetid {np.atleast_1d(targetid[at]).tolist()} at "
                f"{', '.join(f'{s:.2f}″' for s in sep[which].arcsec)}); galclip never picks one: pass a smaller "
                "--match-radius, or remove the duplicate"
            )
    out[rows[j]] = known[i]
    return out


def join_columns(
    targetid: np.ndarray,
    path: str | Path,
    names: tuple[str, ...],
    custom: dict[str, str] | None = None,
    label_dtype: type = np.float32,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
    radius_arcsec: float = 1.0,
) -> tuple[dict[str, np.ndarray], Labels]:
    """Catalogue columns ``names`` for survey rows (n,) int64, after the cuts: (name -> (n,) float64, NaN where a
    galaxy has no row, and the labels as :class:`Labels`, in ``label_dtype`` (float32, as a store holds them): every
    PROVABGS property the file has, and ``custom`` {label: column}). Rows are joined by TARGETID; rows with a
    position id (cutouts) and ``positions`` (ra, dec) (n,) each are joined by position within ``radius_arcsec``,
    when the catalogue has RA and DEC."""
    path = Path(path)
    custom = custom or {}
    extra = tuple(dict.fromkeys([*custom.values(), *(n for n in names if n not in CATALOGUE_COLUMNS)]))
    columns = read_catalogue(path, extra)
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
    if positions is not None and "RA" in columns and "DEC" in columns:
        by_sky = match_positions(
            path,
            targetid,
            positions,
            np.asarray(columns["RA"], np.float64)[keep],
            np.asarray(columns["DEC"], np.float64)[keep],
            radius_arcsec,
        )
        pos = np.where(by_sky >= 0, by_sky, pos)
    hit = pos >= 0

    def joined(values: np.ndarray, dtype) -> np.ndarray:
        out = np.full(len(targetid), np.nan, dtype)
        out[hit] = np.asarray(values)[keep][pos[hit]]
        return out

    values, sources = property_values(columns)
    for name, column in custom.items():
        values[name] = _numeric(path, name, column, columns[column])
        sources[name] = column
    labels = Labels(
        {name: joined(v, label_dtype) for name, v in values.items()},
        sources,
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
    for name, column in custom.items():
        if not np.isfinite(labels.values[name][hit]).any():
            raise InputError(
                f"{path}: column {column!r} (--label {name}={column}) has no finite value for any of the "
                f"{labels.n_matched} matched galaxies; choose another column"
            )
    return {name: joined(_numeric(path, name, name, columns[name]), np.float64) for name in names}, labels


def join_labels(
    targetid: np.ndarray,
    path: str | Path,
    custom: dict[str, str] | None = None,
    label_dtype: type = np.float32,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
    radius_arcsec: float = 1.0,
) -> Labels:
    """Labels for survey rows (n,) int64 from the catalogue at ``path``, after the cuts: every PROVABGS property the
    file has (redshift and log M* always) and ``custom`` {label: column}, in ``label_dtype``; galaxies with a
    position id are joined on the sky (``join_columns``)."""
    _, labels = join_columns(targetid, path, (), custom, label_dtype, positions, radius_arcsec)
    logger.info(
        "catalogue %s: %d rows, %d after cuts, %d matched to %d survey pairs; labels %s",
        path,
        labels.n_catalogue,
        labels.n_after_cuts,
        labels.n_matched,
        len(targetid),
        ", ".join(labels.values),
    )
    return labels


def no_labels(n: int, names: tuple[str, ...] = LABELS) -> Labels:
    """All-NaN labels for ``n`` rows extracted without a catalogue."""
    return Labels({name: np.full(n, np.nan, np.float32) for name in names}, {}, 0, 0, 0)


def photometry_features(
    targetid: np.ndarray, path: str | Path, positions: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """The classic photo-z inputs of survey rows (n,): (n, 3) float64 r, g - r, r - z from the catalogue's
    MAG_G, MAG_R, MAG_Z after the cuts; NaN rows where a galaxy has no catalogue row (joined as ``join_columns``)."""
    mags, _ = join_columns(targetid, path, ("MAG_G", "MAG_R", "MAG_Z"), positions=positions)
    g, r, z = mags["MAG_G"], mags["MAG_R"], mags["MAG_Z"]
    return np.stack([r, g - r, r - z], axis=1)
