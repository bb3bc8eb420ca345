"""Reader for survey files in the public AstroCLIP HDF5 layout (see ``layout``).

A survey is one or more HDF5 files; each holds either groups ("0".."9", as the AstroCLIP
builder writes) or the four datasets at its root. The reader lists segments (file, group,
length) without reading bulk data, then reads row ranges of one segment at a time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from galclip.data.layout import IMAGE_SHAPE, SPECTRUM_SHAPE, SURVEY_DATASETS
from galclip.data.sources import ClosingSource
from galclip.errors import InputError

logger = logging.getLogger(__name__)

SAMPLE_ROWS = 8  # rows per group whose bytes identify a survey file's content (SurveyReader.content)


@dataclass(frozen=True)
class Segment:
    """A contiguous block of rows: one group of one survey file."""

    path: str
    group: str  # "" for datasets at the file root
    n_rows: int
    offset: int  # index of the segment's first row in the whole survey


@dataclass
class SurveyBatch:
    """Rows ``[start, stop)`` of the survey.

    image (n, 152, 152, 3) float32, spectrum (n, 7781) float32, redshift (n,) float32 (NaN where a
    file has none), targetid (n,) int64. A modality the files do not hold is None. Where the layout carries them:
    spectrum_ivar (n, 7781) float32 inverse variance, 0 where a pixel is masked or has no data; ra, dec (n,) float64
    degrees, NaN where unknown (None for a layout with neither, such as AstroCLIP's).
    """

    image: np.ndarray | None
    spectrum: np.ndarray | None
    redshift: np.ndarray
    targetid: np.ndarray
    spectrum_ivar: np.ndarray | None = None
    ra: np.ndarray | None = None
    dec: np.ndarray | None = None


def concat_batches(parts: list[SurveyBatch]) -> SurveyBatch:
    """Consecutive row blocks as one batch: every field concatenated (None stays None)."""
    if len(parts) == 1:
        return parts[0]
    return SurveyBatch(
        *(
            None if getattr(parts[0], k) is None else np.concatenate([getattr(p, k) for p in parts])
            for k in SurveyBatch.__dataclass_fields__
        )
    )


def _resolve_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted([*p.glob("*.h5"), *p.glob("*.hdf5")])
            found = [f for f in found if "provabgs" not in f.name.lower() and f.name != "catalogue.h5"]
            if not found:
                raise InputError(f"{p}: no survey .h5/.hdf5 files in this directory")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file; pass an AstroCLIP-layout HDF5 file or a directory of them")
    return files


MODALITY_DATASETS = {"image": "image", "spectrum": "spectrum"}


def _check_segment(path: Path, name: str, node: h5py.Group) -> tuple[int, tuple[str, ...]]:
    """Check one group: (rows, modalities it holds). A group holds 'targetid' and 'image', 'spectrum' or
    both; every dataset it holds must have one row per targetid."""
    label = f"{path}:{name or '/'}"
    if "targetid" not in node:
        raise InputError(
            f"{label}: missing dataset(s) ['targetid']; an AstroCLIP survey group needs "
            f"{list(SURVEY_DATASETS)} ('image' or 'spectrum' alone for single-modality galaxies)"
        )
    modalities = tuple(m for m in MODALITY_DATASETS if m in node)
    if not modalities:
        raise InputError(
            f"{label}: holds neither 'image' nor 'spectrum' (only {sorted(node.keys())}); a survey "
            "group needs the (152, 152, 3) g,r,z images, the (7781, 1) spectra, or both"
        )
    n = node["targetid"].shape[0]
    for d in (*modalities, *(["redshift"] if "redshift" in node else [])):
        if node[d].shape[0] != n:
            raise InputError(f"{label}: dataset '{d}' has {node[d].shape[0]} rows but 'targetid' has {n}")
    if "image" in modalities:
        img = node["image"].shape[1:]
        if img != IMAGE_SHAPE:
            hint = ""
            if sorted(img) == sorted(IMAGE_SHAPE):
                hint = " (bands first? AstroCLIP stores images as (152, 152, 3) g,r,z: transpose them)"
            raise InputError(f"{label}: 'image' rows have shape {img}, expected {IMAGE_SHAPE}{hint}")
    if "spectrum" in modalities:
        spec = node["spectrum"].shape[1:]
        if spec not in (SPECTRUM_SHAPE, SPECTRUM_SHAPE[:1]):
            raise InputError(
                f"{label}: 'spectrum' rows have shape {spec}, expected {SPECTRUM_SHAPE} "
                "(the DESI 7781-bin grid, 3600-9824 Å); resample the spectra onto that grid"
            )
    return n, modalities


LAYOUT = "astroclip"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def sniff(path: Path) -> bool:
    """Whether ``path`` is an AstroCLIP-layout HDF5: a 'targetid' at the root or in its groups ("0".."9"), beside
    'image' or 'spectrum' (the Multimodal Universe's files hold 'object_id' instead)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != HDF5_MAGIC:
                return False
        with h5py.File(path, "r") as f:
            nodes = [f] + [f[k] for k in list(f.keys())[:16] if isinstance(f[k], h5py.Group)]
            return any("targetid" in n and ("image" in n or "spectrum" in n) for n in nodes)
    except OSError:
        return False


def open_source(files: list[Path], require: Sequence[str] = ()) -> SurveyReader:
    """The AstroCLIP-layout reader of ``files`` (the :mod:`galclip.data.sources` interface)."""
    return SurveyReader(files, require=require)


class SurveyReader(ClosingSource):
    """Lists and reads the galaxies of one or more AstroCLIP-layout survey files.

    ``require``: the modalities every group must hold, ("image", "spectrum") for pairs (extraction,
    training); ``()`` accepts single-modality files, and ``modalities`` then says what every group holds.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], require: Sequence[str] = ("image", "spectrum")):
        self.files = _resolve_paths(paths)
        segments: list[Segment] = []
        held: set[str] = set(MODALITY_DATASETS)
        offset = 0
        for path in self.files:
            try:
                handle = h5py.File(path, "r")
            except OSError as err:
                raise InputError(f"{path}: not a readable HDF5 file ({err}); re-download or regenerate it") from err
            with handle as f:
                names = (
                    [""]
                    if "targetid" in f
                    else sorted((k for k in f.keys() if isinstance(f[k], h5py.Group)), key=_group_sort_key)
                )
                if not names:
                    raise InputError(f"{path}: no survey groups or datasets found")
                for name in names:
                    n, modalities = _check_segment(path, name, f[name] if name else f)
                    lacking = [m for m in require if m not in modalities]
                    if lacking:
                        raise InputError(
                            f"{path}:{name or '/'}: missing dataset(s) {lacking}; it holds only {list(modalities)}. "
                            "Extraction and training need image-spectrum pairs; for galaxies with only an image or "
                            "only a spectrum use 'galclip predict'"
                        )
                    held &= set(modalities)
                    segments.append(Segment(str(path), name, n, offset))
                    offset += n
        self.segments: tuple[Segment, ...] = tuple(segments)
        self.n_rows = offset
        if segments and not held:
            raise InputError(
                f"{', '.join(map(str, self.files))}: no modality is held by every group (some hold only "
                "images, others only spectra); predict them in separate runs, one file set per modality"
            )
        self.modalities: tuple[str, ...] = tuple(m for m in MODALITY_DATASETS if m in held)
        if offset == 0:
            raise InputError(
                f"{', '.join(map(str, self.files))}: no galaxies (every image/spectrum/targetid group "
                "has 0 rows); point galclip at the survey file(s) that hold the pairs"
            )
        self._handles: dict[str, h5py.File] = {}

    layout = LAYOUT

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) (n_rows,) float64 degrees from optional 'ra'/'dec' datasets (galclip's mock writes them; the
        public AstroCLIP files have none): NaN where a group has none."""
        ra = np.concatenate([self._optional(s, "ra", 0, s.n_rows) for s in self.segments])
        dec = np.concatenate([self._optional(s, "dec", 0, s.n_rows) for s in self.segments])
        return ra, dec

    def _optional(self, seg: Segment, name: str, a: int, b: int) -> np.ndarray:
        node = self._node(seg)
        return node[name][a:b].astype(np.float64) if name in node else np.full(b - a, np.nan)

    def locate(self, row: int) -> str:
        """'file:group' holding survey row ``row`` (for error messages)."""
        for seg in self.segments:
            if seg.offset <= row < seg.offset + seg.n_rows:
                return f"{seg.path}:{seg.group or '/'}"
        raise IndexError(f"row {row} is outside the survey's {self.n_rows} rows")

    def targetids(self) -> np.ndarray:
        """All targetids in survey order: (n_rows,) int64. Duplicates are an error."""
        ids = (
            np.concatenate([self._node(s)["targetid"][:].astype(np.int64) for s in self.segments])
            if self.segments
            else np.zeros(0, np.int64)
        )
        uniq, counts = np.unique(ids, return_counts=True)
        dup = uniq[counts > 1]
        if dup.size:
            where = []
            for s in self.segments:
                seg_ids = self._node(s)["targetid"][:]
                hits = np.intersect1d(seg_ids, dup[:5])
                if hits.size:
                    where.append(f"{s.path}:{s.group or '/'}")
            raise InputError(
                f"{len(dup)} duplicate targetid(s) in the survey, e.g. {dup[:5].tolist()} (in {', '.join(where)}); "
                "each galaxy must appear once: drop the repeated rows"
            )
        return ids

    def redshifts(self) -> np.ndarray:
        """Survey (DESI) redshifts in survey order: (n_rows,) float32, NaN for groups without them."""
        return np.concatenate([self._redshift(s, 0, s.n_rows) for s in self.segments])

    def _redshift(self, seg: Segment, a: int, b: int) -> np.ndarray:
        node = self._node(seg)
        return (
            node["redshift"][a:b].astype(np.float32, copy=False)
            if "redshift" in node
            else np.full(b - a, np.nan, np.float32)
        )

    def _node(self, seg: Segment) -> h5py.Group:
        handle = self._handles.get(seg.path)
        if handle is None:
            handle = self._handles[seg.path] = h5py.File(seg.path, "r")
        return handle[seg.group] if seg.group else handle

    def read(self, start: int, stop: int) -> SurveyBatch:
        """Rows ``[start, stop)`` of the whole survey (may span segments)."""
        parts = []
        for seg in self.segments:
            lo, hi = max(start, seg.offset), min(stop, seg.offset + seg.n_rows)
            if lo < hi:
                node = self._node(seg)
                a, b = lo - seg.offset, hi - seg.offset
                parts.append(
                    SurveyBatch(
                        image=node["image"][a:b].astype(np.float32, copy=False) if "image" in self.modalities else None,
                        spectrum=(
                            node["spectrum"][a:b].reshape(b - a, -1).astype(np.float32, copy=False)
                            if "spectrum" in self.modalities
                            else None
                        ),
                        redshift=self._redshift(seg, a, b),
                        targetid=node["targetid"][a:b].astype(np.int64, copy=False),
                        ra=self._optional(seg, "ra", a, b),
                        dec=self._optional(seg, "dec", a, b),
                    )
                )
        if not parts:
            raise IndexError(f"rows [{start}, {stop}) are outside the survey's {self.n_rows} rows")
        return concat_batches(parts)

    def fingerprint(self) -> dict:
        """Cheap identity of the data: files, sizes, segment lengths (no bulk read)."""
        return {
            "files": [str(Path(p).resolve()) for p in self.files],
            "bytes": [Path(p).stat().st_size for p in self.files],
            "segments": [[Path(s.path).name, s.group, s.n_rows] for s in self.segments],
            "n_rows": self.n_rows,
        }

    def content(self, samples: int = SAMPLE_ROWS) -> list[dict]:
        """Identity of each file's content, cheap at any survey size: {"file", "bytes", "n_rows", "targetid_sha256"
        (of every targetid), "sample_sha256" (of the pixels, fluxes and redshifts of ``samples`` evenly spaced rows
        of each group)}, one per file in order. Two files agree on these only when they hold the same galaxies in
        the same rows with the same data, wherever they lie (a copy or a move keeps them; a replacement does not)."""
        out = []
        for path in self.files:
            segs = [s for s in self.segments if s.path == str(path)]
            ids, sample = hashlib.sha256(), hashlib.sha256()
            for seg in segs:
                node = self._node(seg)
                ids.update(np.ascontiguousarray(node["targetid"][:], dtype=np.int64).tobytes())
                for row in np.unique(np.linspace(0, seg.n_rows - 1, min(samples, seg.n_rows)).round().astype(int)):
                    for name in ("image", "spectrum", "redshift"):
                        if name in node:
                            sample.update(np.ascontiguousarray(node[name][int(row)]).tobytes())
            out.append(
                {
                    "file": str(Path(path).resolve()),
                    "bytes": Path(path).stat().st_size,
                    "n_rows": sum(s.n_rows for s in segs),
                    "targetid_sha256": ids.hexdigest(),
                    "sample_sha256": sample.hexdigest(),
                }
            )
        return out

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __getstate__(self) -> dict:  # DataLoader workers each open their own handles
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state


def _group_sort_key(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def survey_changes(recorded: list[dict], current: list[dict]) -> list[str]:
    """What changed between the survey content a store recorded (:meth:`SurveyReader.content` at extraction) and
    the files read now: one line per file that differs, naming it and what changed; empty when they agree.

    Files are matched by content, so moved or copied files agree; a file at a recorded path whose content
    differs is named as replaced."""
    by_content = {(c["targetid_sha256"], c["sample_sha256"]) for c in current}
    now_at = {c["file"]: c for c in current}
    problems = []
    for rec in recorded:
        if (rec["targetid_sha256"], rec["sample_sha256"]) in by_content:
            continue
        now = now_at.get(rec["file"])
        if now is None:
            problems.append(
                f"{rec['file']}: not among the files read now, and none of them holds its content "
                f"({rec['n_rows']} galaxies)"
            )
            continue
        what = []
        if now["bytes"] != rec["bytes"]:
            what.append(f"{now['bytes']} bytes, {rec['bytes']} at extraction")
        if now["n_rows"] != rec["n_rows"]:
            what.append(f"{now['n_rows']} galaxies, {rec['n_rows']} at extraction")
        if now["targetid_sha256"] != rec["targetid_sha256"]:
            what.append("other targetids or another row order")
        if now["sample_sha256"] != rec["sample_sha256"]:
            what.append("other pixels, fluxes or redshifts in its rows")
        problems.append(f"{rec['file']}: replaced since extraction ({'; '.join(what)})")
    return problems


def recorded_survey_problems(
    provenance: dict, reader: SurveyReader, targetids: Callable[[], np.ndarray] | None = None
) -> list[str]:
    """How the files ``reader`` reads differ from those a store with ``provenance`` was extracted from: one line per
    changed file, empty when they agree. Stores that recorded the files' content ("data_content") are checked by it
    (moved or copied files agree); older ones by file size and, with ``targetids`` (the store's, (N,) int64, given
    lazily), by their targetids row by row."""
    recorded = provenance.get("data_content")
    if recorded is not None:
        return survey_changes(recorded, reader.content())
    data = provenance.get("data") or {}
    problems = [
        f"{f}: replaced since extraction ({Path(f).stat().st_size} bytes, {b} at extraction)"
        for f, b in zip(data.get("files", []), data.get("bytes", []))
        if Path(f).exists() and Path(f).stat().st_size != b
    ]
    if not problems and targetids is not None and reader.n_rows == data.get("n_rows"):
        if not np.array_equal(reader.targetids(), targetids()):
            problems.append(
                f"{', '.join(map(str, reader.files))}: replaced since extraction (the targetids differ "
                "from the store's, row by row)"
            )
    return problems


def open_recorded_survey(
    provenance: dict,
    store_path: str | Path,
    targetids: Callable[[], np.ndarray] | None = None,
    paths: Sequence[str | Path] | None = None,
):
    """A reader of the survey files the store at ``store_path`` (with ``provenance``) was extracted from, or of
    ``paths`` (the same files elsewhere), refused with the file and what changed when they no longer hold what they
    held at extraction: no reader may draw or return a galaxy that is not the one named."""
    files = list(paths) if paths else list((provenance.get("data") or {}).get("files", []))
    if not files:
        raise InputError(f"{store_path}: records no survey files; pass them (--data)")
    missing = [f for f in files if not Path(f).exists()]
    if missing:
        raise InputError(
            f"{missing[0]}: the survey file {store_path} was extracted from is not there; put it back, "
            "or pass where it is now (--data)"
        )
    from galclip.data.sources import open_survey

    radius = float((provenance.get("config") or {}).get("match_radius_arcsec", 1.0))
    reader = open_survey(files, require=(), match_radius_arcsec=radius)
    problems = recorded_survey_problems(provenance, reader, targetids)
    if problems:
        reader.close()
        raise InputError(
            f"{problems[0]}. {store_path} was extracted from the earlier file, so its galaxies would be "
            "read from the wrong rows: put the original back, or extract the new file into a new store "
            "('galclip extract DATA NEW_STORE')"
            + (f" ({len(problems) - 1} more file(s) changed)" if len(problems) > 1 else "")
        )
    return reader
