"""Pair an image-only survey source with a spectrum-only one: by TARGETID where both name it, else on the sky.

:func:`match_rows` is the rule, a pure function of the two sides' ids and positions; :class:`MatchedSurvey` is the
:class:`galclip.data.sources.SurveySource` over the pairs it finds, refusing ambiguous or empty matches.

The rule: rows whose real TARGETID (not a :func:`galclip.data.sources.position_targetid`) appears once on each side
are paired by it. The other rows with a known position are paired when exactly one row of the other side lies
within the radius and that row has no other candidate either (``SkyCoord.search_around_sky`` lists every
candidate, not only the nearest). A row with two or more candidates is *ambiguous*: neither it nor its candidates
are paired.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord

from galclip.data.sources import ClosingSource, SurveySource, is_position_targetid
from galclip.data.survey import SurveyBatch
from galclip.errors import InputError

logger = logging.getLogger(__name__)

SIDES = ("image", "spectrum")


@dataclass(frozen=True, eq=False)
class Ambiguity:
    """A row with two or more candidates on the other side within the match radius.

    side: "image" or "spectrum", the side of ``row``; candidates: (k,) int64 rows of the other side, nearest first
    (k >= 2); separations_arcsec: (k,) float64, ascending."""

    side: str
    row: int
    candidates: np.ndarray
    separations_arcsec: np.ndarray


@dataclass(frozen=True, eq=False)
class Match:
    """The pairs :func:`match_rows` found, and the rows it left unpaired.

    image_rows, spectrum_rows: (m,) int64, the pairs, ordered by spectrum row; separation_arcsec: (m,) float64,
    0 for pairs by TARGETID; by_id: how many pairs are by TARGETID. image_only, spectrum_only: (k,) int64 rows paired
    with nothing and in no ambiguous group. ambiguous: one :class:`Ambiguity` per row with two or more candidates
    (image-side rows first, each side in row order). Every row of a side is exactly one of: paired, ``*_only``, or
    in an ambiguous group (:meth:`ambiguous_rows`)."""

    image_rows: np.ndarray
    spectrum_rows: np.ndarray
    separation_arcsec: np.ndarray
    by_id: int
    image_only: np.ndarray
    spectrum_only: np.ndarray
    ambiguous: tuple[Ambiguity, ...] = field(default_factory=tuple)
    radius_arcsec: float = float("nan")

    @property
    def n_pairs(self) -> int:
        return int(self.image_rows.size)

    def ambiguous_rows(self, side: str) -> np.ndarray:
        """(k,) int64 sorted rows of ``side`` ("image" or "spectrum") in an ambiguous group: those with two or more
        candidates and the candidates of the other side's such rows."""
        other = {"image": "spectrum", "spectrum": "image"}[side]
        parts = [np.array([a.row for a in self.ambiguous if a.side == side], np.int64)]
        parts += [a.candidates for a in self.ambiguous if a.side == other]
        return np.unique(np.concatenate(parts).astype(np.int64))

    def counts(self) -> dict[str, int]:
        """{"matched", "by_targetid", "by_position", "image_only", "spectrum_only", "ambiguous"} (ambiguous: rows
        with two or more candidates, either side)."""
        return {
            "matched": self.n_pairs,
            "by_targetid": int(self.by_id),
            "by_position": self.n_pairs - int(self.by_id),
            "image_only": int(self.image_only.size),
            "spectrum_only": int(self.spectrum_only.size),
            "ambiguous": len(self.ambiguous),
        }


def valid_positions(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """(n,) bool: rows whose (ra, dec) in degrees is a position on the sky (finite, |dec| <= 90)."""
    ra, dec = np.asarray(ra, np.float64), np.asarray(dec, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)


def _unique_real_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The real (not position) ids that occur once in ``ids``: (sorted values, their rows), (k,) int64 each."""
    rows = np.flatnonzero(~is_position_targetid(ids))
    values, first, counts = np.unique(ids[rows], return_index=True, return_counts=True)
    once = counts == 1
    return values[once], rows[first[once]]


def _pair_by_id(image_ids: np.ndarray, spectrum_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image rows, spectrum rows), (k,) int64 each: rows sharing a real TARGETID found once on each side."""
    image_values, image_rows = _unique_real_ids(image_ids)
    spectrum_values, spectrum_rows = _unique_real_ids(spectrum_ids)
    _, a, b = np.intersect1d(image_values, spectrum_values, assume_unique=True, return_indices=True)
    return image_rows[a].astype(np.int64), spectrum_rows[b].astype(np.int64)


def _sky(ra: np.ndarray, dec: np.ndarray) -> SkyCoord:
    return SkyCoord(ra=np.asarray(ra, np.float64) * u.deg, dec=np.asarray(dec, np.float64) * u.deg, frame="icrs")


def _candidates(
    image_ra: np.ndarray, image_dec: np.ndarray, spectrum_ra: np.ndarray, spectrum_dec: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (image, spectrum) pair within ``radius`` arcsec: (image idx, spectrum idx, separation arcsec), (e,)
    each, indices into the given arrays."""
    if image_ra.size == 0 or spectrum_ra.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
    images, spectra = _sky(image_ra, image_dec), _sky(spectrum_ra, spectrum_dec)
    idx_image, idx_spectrum, sep, _ = spectra.search_around_sky(images, radius * u.arcsec)
    return idx_image.astype(np.int64), idx_spectrum.astype(np.int64), np.asarray(sep.to_value(u.arcsec), np.float64)


def _ambiguities(side: str, rows: np.ndarray, others: np.ndarray, sep: np.ndarray, multi: np.ndarray) -> list:
    """One :class:`Ambiguity` per row of ``side`` flagged in ``multi``, from the candidate edges (rows, others, sep),
    (e,) each in source rows; ``multi`` (e,) bool marks edges whose row has two or more candidates."""
    rows, others, sep = rows[multi], others[multi], sep[multi]
    order = np.lexsort((sep, rows))
    rows, others, sep = rows[order], others[order], sep[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if rows.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], rows.size]
    return [Ambiguity(side, int(rows[a]), others[a:b].copy(), sep[a:b].copy()) for a, b in zip(starts, ends)]


def match_rows(
    image_ids: np.ndarray,
    image_ra: np.ndarray,
    image_dec: np.ndarray,
    spectrum_ids: np.ndarray,
    spectrum_ra: np.ndarray,
    spectrum_dec: np.ndarray,
    radius_arcsec: float,
) -> Match:
    """Pair image rows with spectrum rows (see the module's rule).

    ids: (n,) int64 TARGETIDs (negative: position ids, never paired by id); ra, dec: (n,) float64 degrees, NaN where
    unknown (such rows, and rows with |dec| > 90, are never paired by position). radius_arcsec: the match radius
    (> 0). Pairs by TARGETID come first; the rows left are paired on the sky."""
    if not radius_arcsec > 0:
        raise ValueError(f"radius_arcsec must be > 0, got {radius_arcsec}")
    image_ids, spectrum_ids = np.asarray(image_ids, np.int64), np.asarray(spectrum_ids, np.int64)
    n_image, n_spectrum = image_ids.size, spectrum_ids.size
    id_image, id_spectrum = _pair_by_id(image_ids, spectrum_ids)

    free_image = valid_positions(image_ra, image_dec)
    free_image[id_image] = False
    free_spectrum = valid_positions(spectrum_ra, spectrum_dec)
    free_spectrum[id_spectrum] = False
    cand_image, cand_spectrum = np.flatnonzero(free_image), np.flatnonzero(free_spectrum)
    e_image, e_spectrum, e_sep = _candidates(
        np.asarray(image_ra, np.float64)[cand_image],
        np.asarray(image_dec, np.float64)[cand_image],
        np.asarray(spectrum_ra, np.float64)[cand_spectrum],
        np.asarray(spectrum_dec, np.float64)[cand_spectrum],
        radius_arcsec,
    )
    e_image, e_spectrum = cand_image[e_image], cand_spectrum[e_spectrum]  # source rows
    multi_image = np.bincount(e_image, minlength=n_image)[e_image] >= 2
    multi_spectrum = np.bincount(e_spectrum, minlength=n_spectrum)[e_spectrum] >= 2
    unique = ~(multi_image | multi_spectrum)

    image_rows = np.concatenate([id_image, e_image[unique]])
    spectrum_rows = np.concatenate([id_spectrum, e_spectrum[unique]])
    separation = np.concatenate([np.zeros(id_image.size), e_sep[unique]])
    order = np.argsort(spectrum_rows, kind="stable")

    ambiguous = _ambiguities("image", e_image, e_spectrum, e_sep, multi_image)
    ambiguous += _ambiguities("spectrum", e_spectrum, e_image, e_sep, multi_spectrum)
    grouped_image = np.zeros(n_image, bool)
    grouped_image[e_image[~unique]] = True
    grouped_spectrum = np.zeros(n_spectrum, bool)
    grouped_spectrum[e_spectrum[~unique]] = True
    paired_image = np.zeros(n_image, bool)
    paired_image[image_rows] = True
    paired_spectrum = np.zeros(n_spectrum, bool)
    paired_spectrum[spectrum_rows] = True
    return Match(
        image_rows=image_rows[order].astype(np.int64),
        spectrum_rows=spectrum_rows[order].astype(np.int64),
        separation_arcsec=separation[order].astype(np.float64),
        by_id=int(id_image.size),
        image_only=np.flatnonzero(~paired_image & ~grouped_image).astype(np.int64),
        spectrum_only=np.flatnonzero(~paired_spectrum & ~grouped_spectrum).astype(np.int64),
        ambiguous=tuple(ambiguous),
        radius_arcsec=float(radius_arcsec),
    )


def closest_separation_arcsec(
    image_ra: np.ndarray, image_dec: np.ndarray, spectrum_ra: np.ndarray, spectrum_dec: np.ndarray
) -> float:
    """The smallest separation in arcsec between any image and any spectrum with a known position; NaN when a
    side has none. (n,) float64 degrees each."""
    ok_image, ok_spectrum = valid_positions(image_ra, image_dec), valid_positions(spectrum_ra, spectrum_dec)
    if not ok_image.any() or not ok_spectrum.any():
        return float("nan")
    images = _sky(np.asarray(image_ra)[ok_image], np.asarray(image_dec)[ok_image])
    spectra = _sky(np.asarray(spectrum_ra)[ok_spectrum], np.asarray(spectrum_dec)[ok_spectrum])
    _, sep, _ = images.match_to_catalog_sky(spectra)
    return float(np.min(sep.to_value(u.arcsec)))


def _describe_source(source: SurveySource) -> str:
    """'layout (first file and N more, R rows)' for messages."""
    files = list(source.files)
    more = f" and {len(files) - 1} more" if len(files) > 1 else ""
    first = files[0] if files else "no files"
    return f"{source.layout} ({first}{more}, {source.n_rows} rows)"


def _name_row(targetid: int, ra: float, dec: float, where: str) -> str:
    """A galaxy for messages: its TARGETID when it has a real one, else its position; and where it is stored."""
    if not is_position_targetid(np.int64(targetid)):
        return f"TARGETID {targetid} ({where})"
    return f"ra {ra:.6f}, dec {dec:.6f} ({where})"


def _fmt_arcsec(value: float) -> str:
    """Arcsec for messages: 2 decimals, 3 significant digits below 0.1″."""
    return f"{value:.2f}″" if value >= 0.1 else f"{value:.3g}″"


def _concat_batches(parts: list[SurveyBatch]) -> SurveyBatch:
    """One batch of ``parts`` in order; a field is None only when it is None in every part."""
    if len(parts) == 1:
        return parts[0]
    fields = {}
    for name in SurveyBatch.__dataclass_fields__:
        values = [getattr(p, name) for p in parts]
        held = [v is not None for v in values]
        if not any(held):
            fields[name] = None
        elif not all(held):
            raise ValueError(f"SurveyBatch field '{name}' is None in some reads of a source and set in others")
        else:
            fields[name] = np.concatenate(values)
    return SurveyBatch(**fields)


def contiguous_runs(sorted_rows: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive rows covering ``sorted_rows`` ((n,) int64, ascending, unique) in order."""
    if sorted_rows.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
    starts = np.r_[0, breaks]
    ends = np.r_[breaks, sorted_rows.size]
    return [(int(sorted_rows[a]), int(sorted_rows[b - 1]) + 1) for a, b in zip(starts, ends)]


def read_rows(source: SurveySource, rows: np.ndarray) -> SurveyBatch:
    """Rows ``rows`` ((n,) int64 unique, any order) of ``source`` in that order, read as sorted contiguous runs."""
    rows = np.asarray(rows, np.int64)
    order = np.argsort(rows, kind="stable")
    in_order = bool(np.all(order == np.arange(rows.size)))
    sorted_rows = rows if in_order else rows[order]
    batch = _concat_batches([source.read(a, b) for a, b in contiguous_runs(sorted_rows)])
    if in_order:
        return batch
    where = np.empty_like(order)
    where[order] = np.arange(rows.size)  # position of rows[k] among the sorted rows
    return SurveyBatch(
        **{
            name: None if getattr(batch, name) is None else getattr(batch, name)[where]
            for name in SurveyBatch.__dataclass_fields__
        }
    )


class MatchedSurvey(ClosingSource):
    """The image-spectrum pairs of an image-only source and a spectrum-only source, as one source.

    Rows are the pairs in spectrum-row order. targetid: the spectrum's TARGETID (the image's where the spectrum
    has only a position id and the image a real one); redshift: the spectrum side's; ra, dec: the spectrum side's,
    else the image side's. Refused (:class:`galclip.errors.InputError`) when any row is ambiguous or nothing pairs.
    ``match`` holds the :class:`Match`; :meth:`unmatched_table` lists the galaxies left unpaired."""

    modalities = ("image", "spectrum")

    def __init__(self, images: SurveySource, spectra: SurveySource, match_radius_arcsec: float = 1.0):
        if "image" not in images.modalities or "spectrum" not in spectra.modalities:
            raise InputError(
                f"{_describe_source(images)} and {_describe_source(spectra)}: galclip pairs an image source with a "
                f"spectrum source, but these hold {'+'.join(images.modalities)} and {'+'.join(spectra.modalities)}"
            )
        if not match_radius_arcsec > 0:
            raise InputError(f"--match-radius {match_radius_arcsec}: must be > 0 arcsec (the default is 1)")
        self.images, self.spectra = images, spectra
        self.radius_arcsec = float(match_radius_arcsec)
        self.layout = f"{images.layout}+{spectra.layout}"
        self.files: list[Path] = [*images.files, *spectra.files]

        image_ids, (image_ra, image_dec) = self._side(images)
        spectrum_ids, (spectrum_ra, spectrum_dec) = self._side(spectra)
        match = match_rows(image_ids, image_ra, image_dec, spectrum_ids, spectrum_ra, spectrum_dec, self.radius_arcsec)
        if match.ambiguous:
            raise InputError(
                self._ambiguity_message(
                    match, image_ids, spectrum_ids, (image_ra, image_dec), (spectrum_ra, spectrum_dec)
                )
            )
        if match.n_pairs == 0:
            raise InputError(self._no_match_message(image_ra, image_dec, spectrum_ra, spectrum_dec))
        self.match = match
        self.n_rows = match.n_pairs
        self._store_pairs(match, image_ids, spectrum_ids, (image_ra, image_dec), (spectrum_ra, spectrum_dec))
        self._unmatched = self._unmatched_columns(
            match, image_ids, spectrum_ids, image_ra, image_dec, spectrum_ra, spectrum_dec
        )
        logger.debug(
            "sky match within %.3g″ of %s and %s: %s", self.radius_arcsec, images.layout, spectra.layout, match.counts()
        )

    @staticmethod
    def _side(source: SurveySource) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """A source's (ids (n,) int64, (ra, dec) (n,) float64 degrees), checked for length and sky range."""
        ids = np.asarray(source.targetids(), np.int64)
        ra, dec = (np.asarray(a, np.float64) for a in source.positions())
        if not ids.shape == ra.shape == dec.shape == (source.n_rows,):
            raise InputError(
                f"{_describe_source(source)}: lists {ids.size} targetids and {ra.size}/{dec.size} positions for "
                f"{source.n_rows} rows; the files are inconsistent, re-download or regenerate them"
            )
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(np.isfinite(dec) & (np.abs(dec) > 90.0))
        if bad.size:
            row = int(bad[0])
            raise InputError(
                f"{source.locate(row)}: Dec {dec[row]:.6g} deg is off the sky ({bad.size} row(s) with |Dec| > 90); "
                "positions must be RA, Dec in degrees: fix those rows' coordinates"
            )
        return ids, (ra, dec)

    def _store_pairs(self, match: Match, image_ids, spectrum_ids, image_pos, spectrum_pos) -> None:
        """Per-pair ids, redshifts and positions, (n_rows,) each, in pair order."""
        i, s = match.image_rows, match.spectrum_rows
        self._image_ids, self._spectrum_ids = image_ids[i], spectrum_ids[s]
        targetid = self._spectrum_ids.copy()
        take_image = is_position_targetid(targetid) & ~is_position_targetid(self._image_ids)
        targetid[take_image] = self._image_ids[take_image]
        self._targetid = targetid
        self._redshift = np.asarray(self.spectra.redshifts(), np.float32)[s]
        ra, dec = spectrum_pos[0][s].copy(), spectrum_pos[1][s].copy()
        fallback = ~valid_positions(ra, dec)
        ra[fallback], dec[fallback] = image_pos[0][i][fallback], image_pos[1][i][fallback]
        self._ra, self._dec = ra, dec

    @staticmethod
    def _unmatched_columns(match, image_ids, spectrum_ids, image_ra, image_dec, spectrum_ra, spectrum_dec) -> dict:
        """The unmatched table less its 'where' column (filled by :meth:`unmatched_table`), plus each row's 'row'."""
        i, s = match.image_only, match.spectrum_only
        return {
            "side": np.array(["image"] * i.size + ["spectrum"] * s.size, dtype="<U8"),
            "targetid": np.concatenate([image_ids[i], spectrum_ids[s]]).astype(np.int64),
            "ra": np.concatenate([image_ra[i], spectrum_ra[s]]).astype(np.float64),
            "dec": np.concatenate([image_dec[i], spectrum_dec[s]]).astype(np.float64),
            "row": np.concatenate([i, s]).astype(np.int64),
        }

    def _ambiguity_message(self, match: Match, image_ids, spectrum_ids, image_pos, spectrum_pos) -> str:
        """One line: the first ambiguous galaxy, its two nearest candidates with separations, the count, the fix."""
        first = next((a for a in match.ambiguous if a.side == "spectrum"), match.ambiguous[0])
        sides = {
            "image": (self.images, image_ids, image_pos),
            "spectrum": (self.spectra, spectrum_ids, spectrum_pos),
        }
        other_side = "spectrum" if first.side == "image" else "image"
        others = "spectra" if other_side == "spectrum" else "images"

        def name(side: str, row: int) -> str:
            source, ids, (ra, dec) = sides[side]
            return _name_row(int(ids[row]), float(ra[row]), float(dec[row]), source.locate(row))

        a, b = (name(other_side, int(c)) for c in first.candidates[:2])
        x, y = (_fmt_arcsec(v) for v in first.separations_arcsec[:2])
        more = f" ({first.candidates.size} in all)" if first.candidates.size > 2 else ""
        return (
            f"{len(match.ambiguous)} {'galaxy has' if len(match.ambiguous) == 1 else 'galaxies have'} two or more "
            f"counterparts within --match-radius "
            f"{_fmt_arcsec(self.radius_arcsec)}, so galclip cannot tell which to pair: e.g. the {first.side} "
            f"{name(first.side, first.row)} has the {others} {a} at {x} and {b} at {y}{more}; pass a smaller "
            f"--match-radius (the two candidates are {x} and {y} away), or remove the duplicate"
        )

    def _no_match_message(self, image_ra, image_dec, spectrum_ra, spectrum_dec) -> str:
        """One line: both sources, the closest separation found, the fix."""
        closest = closest_separation_arcsec(image_ra, image_dec, spectrum_ra, spectrum_dec)
        if np.isnan(closest):
            side = "images" if not valid_positions(image_ra, image_dec).any() else "spectra"
            sky = f"and the {side} carry no positions to pair on"
        else:
            sky = f"and the closest image and spectrum are {_fmt_arcsec(closest)} apart"
        return (
            f"no galaxy of {_describe_source(self.images)} pairs with one of {_describe_source(self.spectra)}: they "
            f"share no TARGETID, {sky} (--match-radius {_fmt_arcsec(self.radius_arcsec)}); check the positions "
            "(RA, Dec in degrees, the same galaxies on both sides) or raise --match-radius"
        )

    # the SurveySource interface

    def targetids(self) -> np.ndarray:
        """(n_rows,) int64 per pair: the spectrum's TARGETID, the image's where only the image names a real one."""
        return self._targetid.copy()

    def redshifts(self) -> np.ndarray:
        """(n_rows,) float32 the spectrum side's redshifts, NaN where none."""
        return self._redshift.copy()

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) (n_rows,) float64 degrees: the spectrum's, else the image's, NaN where neither knows."""
        return self._ra.copy(), self._dec.copy()

    def _pair(self, row: int) -> tuple[int, int]:
        if not 0 <= row < self.n_rows:
            raise IndexError(f"row {row} is outside the {self.n_rows} matched pairs")
        return int(self.match.image_rows[row]), int(self.match.spectrum_rows[row])

    def read(self, start: int, stop: int) -> SurveyBatch:
        """Pairs ``[start, stop)``: image, spectrum, spectrum_ivar, redshift, targetid, ra, dec. Each side is read as
        sorted contiguous runs of its own rows, the images then reordered to the pairs' order."""
        if not 0 <= start < stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) are outside the {self.n_rows} matched pairs")
        spectrum = read_rows(self.spectra, self.match.spectrum_rows[start:stop])
        image = read_rows(self.images, self.match.image_rows[start:stop])
        self._check_rows(spectrum, self._spectrum_ids[start:stop], self.spectra, self.match.spectrum_rows[start:stop])
        self._check_rows(image, self._image_ids[start:stop], self.images, self.match.image_rows[start:stop])
        return SurveyBatch(
            image=image.image,
            spectrum=spectrum.spectrum,
            redshift=self._redshift[start:stop].copy(),
            targetid=self._targetid[start:stop].copy(),
            spectrum_ivar=spectrum.spectrum_ivar,
            ra=self._ra[start:stop].copy(),
            dec=self._dec[start:stop].copy(),
        )

    @staticmethod
    def _check_rows(batch: SurveyBatch, expected: np.ndarray, source: SurveySource, rows: np.ndarray) -> None:
        """Refuse a read whose targetids are not those the source listed for ``rows``: the galaxy read would not be
        the one paired."""
        got = np.asarray(batch.targetid, np.int64)
        if got.shape != expected.shape or not np.array_equal(got, expected):
            k = int(np.flatnonzero(got != expected)[0]) if got.shape == expected.shape else 0
            raise InputError(
                f"{source.locate(int(rows[k]))}: holds targetid {got[k] if got.size > k else 'none'} now, but "
                f"{expected[k]} when the survey was opened; the files changed while galclip read them: rerun"
            )

    def locate(self, row: int) -> str:
        """Both files of pair ``row``: 'image FILE...; spectrum FILE...'."""
        i, s = self._pair(row)
        return f"image {self.images.locate(i)}; spectrum {self.spectra.locate(s)}"

    def unmatched_table(self) -> dict[str, np.ndarray]:
        """Every image-only and spectrum-only galaxy (images first, each side in row order): columns side
        ('image'/'spectrum'), targetid (int64, the source's own), ra, dec (float64 degrees, NaN where unknown),
        where (the source's :meth:`locate`), each (k,)."""
        table = {k: v.copy() for k, v in self._unmatched.items() if k != "row"}
        sources = {"image": self.images, "spectrum": self.spectra}
        table["where"] = np.array(
            [sources[side].locate(int(row)) for side, row in zip(self._unmatched["side"], self._unmatched["row"])],
            dtype=str,
        )
        return table

    def fingerprint(self) -> dict:
        """{"layout", "match_radius_arcsec", "images", "spectra" (each source's fingerprint), "n_rows"}, and both
        sources' "files" and "bytes" in one list each (what reopening the survey reads)."""
        images, spectra = self.images.fingerprint(), self.spectra.fingerprint()
        return {
            "layout": self.layout,
            "match_radius_arcsec": self.radius_arcsec,
            "images": images,
            "spectra": spectra,
            "n_rows": self.n_rows,
            "files": [*images.get("files", []), *spectra.get("files", [])],
            "bytes": [*images.get("bytes", []), *spectra.get("bytes", [])],
        }

    def content(self) -> list[dict]:
        """The image source's per-file content identities, then the spectrum source's."""
        return [*self.images.content(), *self.spectra.content()]

    def close(self) -> None:
        try:
            self.images.close()
        finally:
            self.spectra.close()
