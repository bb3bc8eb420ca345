"""What a search may be narrowed by, as astronomers ask it: label windows and "has image / has spectrum" filters,
a position on the sky that snaps to the nearest indexed galaxy, and the fragments of one galaxy dropped.

Pure NumPy over the index's per-row arrays; :mod:`galclip.index.search` applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from galclip.errors import GalclipError

PIXEL_ARCSEC = 0.262  # Legacy Survey pixel scale
DEDUP_ARCSEC = 96 * PIXEL_ARCSEC  # galaxy_search drops neighbours closer on the sky than one 96 px cutout
SNAP_ARCSEC = 1.0  # a position query snaps to the nearest indexed galaxy within this (extract's --match-radius)


def parse_window(text: str) -> tuple[str, float | None, float | None]:
    """'redshift=0.1:0.3' (either end may be empty) -> (label, lo, hi), each end inclusive."""
    name, sep, rng = str(text).partition("=")
    lo_s, colon, hi_s = rng.partition(":")
    if not sep or not colon or not name.strip():
        raise GalclipError(f"filter {text!r}: write LABEL=LO:HI (either end may be left empty), e.g. redshift=0.1:0.3")
    try:
        lo = float(lo_s) if lo_s.strip() else None
        hi = float(hi_s) if hi_s.strip() else None
    except ValueError as err:
        raise GalclipError(f"filter {text!r}: LO and HI must be numbers ({err})") from err
    if lo is not None and hi is not None and lo > hi:
        raise GalclipError(f"filter {text!r}: LO {lo} is above HI {hi}")
    return name.strip(), lo, hi


@dataclass(frozen=True)
class Filters:
    """Which galaxies a result may be: label windows {label: (lo, hi)} (inclusive, None = open; a galaxy without
    the label fails), and has_image / has_spectrum (None = either)."""

    windows: dict = field(default_factory=dict)
    has_image: bool | None = None
    has_spectrum: bool | None = None

    @classmethod
    def parse(cls, windows: tuple[str, ...] | list[str] = (), has_image=None, has_spectrum=None) -> Filters:
        parsed = {}
        for text in windows:
            name, lo, hi = parse_window(text)
            if name in parsed:
                raise GalclipError(f"filter on {name!r} given twice; give one window LABEL=LO:HI")
            parsed[name] = (lo, hi)
        return cls(parsed, has_image, has_spectrum)

    def __bool__(self) -> bool:
        return bool(self.windows) or self.has_image is not None or self.has_spectrum is not None

    def describe(self) -> str:
        parts = [
            f"{lo if lo is not None else ''} <= {name} <= {hi if hi is not None else ''}".strip(" <=")
            for name, (lo, hi) in self.windows.items()
        ]
        for m in ("image", "spectrum"):
            want = getattr(self, f"has_{m}")
            if want is not None:
                parts.append(f"{'has' if want else 'no'} {m}")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {
            "windows": {k: list(v) for k, v in self.windows.items()},
            "has_image": self.has_image,
            "has_spectrum": self.has_spectrum,
        }

    def mask(self, rows: dict[str, np.ndarray], has: dict[str, np.ndarray], labels: tuple[str, ...]) -> np.ndarray:
        """(N,) bool: the galaxies that pass. ``has``: modality -> (N,) bool; ``labels``: the index's label names."""
        n = len(rows["targetid"])
        keep = np.ones(n, bool)
        for name, (lo, hi) in self.windows.items():
            if name not in labels:
                raise GalclipError(
                    f"filter on {name!r}: the index holds no such label; choose from {list(labels)} (a magnitude "
                    "is one when the store was extracted with --label NAME=COLUMN)"
                )
            v = rows[name]
            ok = np.isfinite(v)
            if lo is not None:
                ok &= v >= lo
            if hi is not None:
                ok &= v <= hi
            keep &= ok
        for m in ("image", "spectrum"):
            want = getattr(self, f"has_{m}")
            if want is not None:
                keep &= has[m] == want
        return keep


def check_position(ra: float, dec: float, radius_arcsec: float) -> None:
    """Refuse RA outside [0, 360), Dec outside [-90, 90] or a radius that is not positive, naming each."""
    if not (math.isfinite(ra) and 0 <= ra < 360):
        raise GalclipError(f"ra {ra}: RA must be in degrees within [0, 360)")
    if not (math.isfinite(dec) and -90 <= dec <= 90):
        raise GalclipError(f"dec {dec}: Dec must be in degrees within [-90, 90]")
    if not (math.isfinite(radius_arcsec) and radius_arcsec > 0):
        raise GalclipError(f"radius {radius_arcsec}: the radius must be a positive number of arcseconds")


def separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in arcseconds (haversine), degrees in; broadcasts."""
    r1, d1, r2, d2 = (np.radians(np.asarray(x, np.float64)) for x in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1)))) * 3600


@dataclass
class SkyLookup:
    """Nearest indexed galaxy to a position: the rows sorted by Dec once, then a Dec band widened until it holds
    the nearest (every galaxy in a band of half-width w around the query's Dec is within w of it in Dec, and the
    nearest found at separation s is final once the band's half-width reaches s)."""

    ra: np.ndarray
    dec: np.ndarray
    order: np.ndarray = field(init=False)
    sorted_dec: np.ndarray = field(init=False)

    def __post_init__(self):
        known = np.flatnonzero(np.isfinite(self.ra) & np.isfinite(self.dec))
        self.order = known[np.argsort(self.dec[known], kind="stable")]
        self.sorted_dec = self.dec[self.order]

    def nearest(self, ra: float, dec: float) -> tuple[int, float]:
        """(position of the nearest galaxy, its separation in arcsec); (-1, inf) when none has a position."""
        if not len(self.order):
            return -1, math.inf
        width = 10 / 3600  # degrees
        while True:
            lo, hi = np.searchsorted(self.sorted_dec, [dec - width, dec + width])
            if hi > lo:
                cand = self.order[lo:hi]
                sep = separation_arcsec(ra, dec, self.ra[cand], self.dec[cand])
                best = int(np.argmin(sep))
                if sep[best] <= width * 3600 or (lo == 0 and hi == len(self.order)):
                    return int(cand[best]), float(sep[best])
            elif lo == 0 and hi == len(self.order):
                return -1, math.inf
            width *= 4


def dedupe(
    positions: np.ndarray, ra: np.ndarray | None, dec: np.ndarray | None, radius_arcsec: float, anchor: int = -1
) -> np.ndarray:
    """(m,) bool over ranked result ``positions``: keep each unless it lies within ``radius_arcsec`` of a
    better-ranked kept result (or of the query galaxy ``anchor``, itself never dropped). No positions, or a radius
    of 0: every one kept."""
    keep = np.ones(len(positions), bool)
    if ra is None or radius_arcsec <= 0 or not len(positions):
        return keep
    r, d = ra[positions], dec[positions]
    kept_r = [ra[anchor]] if anchor >= 0 and np.isfinite(ra[anchor]) else []
    kept_d = [dec[anchor]] if kept_r else []
    for j in range(len(positions)):
        if positions[j] == anchor or not (np.isfinite(r[j]) and np.isfinite(d[j])):
            continue
        if kept_r and np.min(separation_arcsec(r[j], d[j], np.array(kept_r), np.array(kept_d))) < radius_arcsec:
            keep[j] = False
            continue
        kept_r.append(r[j])
        kept_d.append(d[j])
    return keep
