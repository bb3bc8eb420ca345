"""Open an index folder and search it: by an indexed galaxy, by a pair from a survey file, or by a vector.

Every search returns the same records (``galclip search --json`` and ``/api/search`` give them)::

    {"query": {"targetid", "modality", "source", "redshift", "log_mstar", <every other label>},
     "target": "image" | "spectrum",
     "neighbours": [{"rank", "similarity", "targetid", "redshift", "log_mstar", ..., "is_partner"}, ...],
     "prediction": {"redshift": {"value", "lo", "hi"}, "log_mstar": {...}, ..., "similarity", "ood", "k"} or null,
     "labels": {label: its title with unit}}

``is_partner`` marks the query galaxy's own other modality in a cross-modal search. ``prediction`` is the
zero-shot predictor's (:mod:`galclip.index.zero_shot`): the index's labelled train-split galaxies in the query's
modality, k = 16, whatever the search's k and target; null when the index has no labelled training galaxies.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from galclip.errors import DamagedDataError, GalclipError
from galclip.index.format import MAP_FILE, MEMBER_SUFFIX, REPAIR, ROWS_FILE, read_sidecar, verify_files
from galclip.index.query import DEDUP_ARCSEC, SNAP_ARCSEC, Filters, SkyLookup, check_position, dedupe
from galclip.index.vectors import IndexSpec, VectorFile, VectorIndex
from galclip.index.zero_shot import DEFAULT_K, Reference, load_reference
from galclip.neighbours import l2_normalise
from galclip.vocabulary import MODALITIES, label_info

logger = logging.getLogger(__name__)


class NotIndexed(GalclipError):
    """A targetid the index does not hold."""


def float_or_none(value) -> float | None:
    """A finite float, or None for NaN/inf (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


ROW_KEYS = ("row", "targetid", "split", "ra", "dec", "store")  # the per-row arrays of rows.npz that are not labels
BOTH = "both"  # a query by both modalities at once: the mean of the two unit embeddings, renormalised


def is_row_key(key: str) -> bool:
    """Whether a rows.npz array is bookkeeping (row, targetid, ..., {modality}_pos) rather than a label."""
    return key in ROW_KEYS or key.endswith(MEMBER_SUFFIX)


def _check_modality(name: str, value: str, both: bool = False) -> None:
    allowed = (*MODALITIES, BOTH) if both else MODALITIES
    if value not in allowed:
        raise GalclipError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass
class Index:
    """An index folder: sidecar, per-modality FAISS indexes, and per-row arrays.

    rows: targetid, row, split, then each label (redshift, log_mstar, ...) and, where known, ra and dec, each (N,);
    embeddings: modality -> (N, 128)
    float32 memory map, L2-normalised.
    """

    path: Path
    sidecar: dict
    indexes: dict
    rows: dict
    embeddings: dict
    _cache: dict = field(default_factory=dict, repr=False)  # reference sets, lookups: built once

    def __len__(self) -> int:
        return int(self.sidecar["n"])

    @property
    def label_names(self) -> tuple[str, ...]:
        """The catalogue labels the index holds per galaxy: redshift, log_mstar, then any other the store had."""
        return tuple(k for k in self.rows if not is_row_key(k))

    def label_titles(self) -> dict[str, str]:
        """label -> its title with unit, in the index's order (what pages and tables call it)."""
        return {name: label_info(name)[0] for name in self.label_names}

    def label_record(self, pos: int) -> dict[str, float | None]:
        """Galaxy ``pos``'s labels, None where it has none: {label: value}."""
        return {name: float_or_none(self.rows[name][pos]) for name in self.label_names}

    def members(self, modality: str) -> np.ndarray:
        """(N_m,) int64 positions of the galaxies that have ``modality``, in the order of its vectors (every galaxy,
        for an index of paired stores)."""
        key = f"{modality}{MEMBER_SUFFIX}"
        return self.rows[key] if key in self.rows else np.arange(len(self), dtype=np.int64)

    def count(self, modality: str) -> int:
        """How many galaxies have ``modality`` (its index's vectors), without building any array."""
        key = f"{modality}{MEMBER_SUFFIX}"
        return len(self.rows[key]) if key in self.rows else len(self)

    def has(self, modality: str) -> np.ndarray:
        """(N,) bool: which galaxies have ``modality``."""
        out = np.zeros(len(self), bool)
        out[self.members(modality)] = True
        return out

    def vector_ids(self, modality: str, positions: np.ndarray) -> np.ndarray:
        """Row ``positions`` -> their vector ids in ``modality``'s index (-1 where a galaxy lacks it)."""
        positions = np.asarray(positions, np.int64)
        key = f"{modality}{MEMBER_SUFFIX}"
        if key not in self.rows:
            return positions.copy()
        members = self.rows[key]
        if not len(members):
            return np.full(len(positions), -1, np.int64)
        at = np.clip(np.searchsorted(members, positions), 0, len(members) - 1)
        return np.where(members[at] == positions, at, -1)

    def vectors_at(self, modality: str, positions: np.ndarray) -> np.ndarray:
        """(len(positions), 128) float32 unit vectors of galaxies at ``positions`` (each must have ``modality``)."""
        ids = self.vector_ids(modality, positions)
        if (ids < 0).any():
            tid = int(self.rows["targetid"][np.asarray(positions)[ids < 0][0]])
            raise GalclipError(
                f"targetid {tid} has no {modality} in the index at {self.path}; query by its other modality"
            )
        return np.asarray(self.embeddings[modality][ids], np.float32)

    def query_vector(self, modality: str, pos: int) -> np.ndarray:
        """(1, 128) unit vector of galaxy ``pos`` in ``modality``, or for "both" the mean of its two, renormalised."""
        if modality == BOTH:
            both = self.vectors_at("image", [pos]) + self.vectors_at("spectrum", [pos])
            return l2_normalise(both).astype(np.float32)
        return self.vectors_at(modality, [pos])

    def sky(self) -> SkyLookup:
        """The index's positions sorted once for position queries; an error when it holds none."""
        if "ra" not in self.rows:
            raise GalclipError(
                f"{self.path}: its galaxies have no positions (a store extracted before RA/Dec were recorded); "
                "search by targetid, or rebuild the index from a store that records them"
            )
        if "sky" not in self._cache:
            self._cache["sky"] = SkyLookup(self.rows["ra"], self.rows["dec"])
        return self._cache["sky"]

    def locate(self, ra: float, dec: float, radius_arcsec: float = SNAP_ARCSEC) -> tuple[int, float]:
        """(position, separation in arcsec) of the indexed galaxy nearest to (ra, dec) in degrees; NotIndexed naming
        the nearest and its separation when none lies within ``radius_arcsec``."""
        check_position(ra, dec, radius_arcsec)
        pos, sep = self.sky().nearest(ra, dec)
        if pos < 0:
            raise NotIndexed(f"{self.path}: no indexed galaxy has a position")
        if sep > radius_arcsec:
            raise NotIndexed(
                f"no indexed galaxy within {radius_arcsec:g} arcsec of RA {ra:g}, Dec {dec:g}: the nearest is "
                f"targetid {int(self.rows['targetid'][pos])} at {sep:.2f} arcsec (RA {self.rows['ra'][pos]:.6f}, "
                f"Dec {self.rows['dec'][pos]:.6f}); widen --radius or search by that targetid"
            )
        return pos, sep

    def find(self, targetid: int) -> int:
        """Position of ``targetid`` in the index, or -1 when it is not indexed (a sorted lookup, built once)."""
        tid = self.rows["targetid"]
        built_for, order = self._cache.get("targetid_order", (None, None))
        if built_for is not tid:  # built once per targetid array
            ascending = len(tid) < 2 or bool(np.all(tid[1:] >= tid[:-1]))
            dtype = np.int32 if len(tid) < 2**31 else np.int64
            order = None if ascending else np.argsort(tid, kind="stable").astype(dtype)
            self._cache["targetid_order"] = (tid, order)
        keys = tid if order is None else tid[order]
        at = int(np.searchsorted(keys, targetid))
        if at >= len(tid) or keys[at] != targetid:
            return -1
        return int(at if order is None else order[at])

    def position(self, targetid: int) -> int:
        """Position of ``targetid``; an error naming the fix when it is not indexed."""
        pos = self.find(targetid)
        if pos < 0:
            raise NotIndexed(
                f"targetid {targetid} is not in the index at {self.path} ({len(self)} galaxies); "
                "check the number, or embed a galaxy from its survey file with --data FILE"
            )
        return pos

    def _candidates(self, part: str) -> list[Path]:
        """Where ``part`` ("store" or "heads") may be: relative to the folder (format 3), then the absolute path."""
        recorded = Path(self.sidecar[part])
        out = [recorded] if recorded.is_absolute() else [(self.path / recorded).resolve()]
        absolute = self.sidecar.get(f"{part}_absolute")
        if absolute and Path(absolute) not in out:
            out.append(Path(absolute))
        return out

    def check_heads(self) -> Path:
        """The heads file the index was built from, found beside the folder or where it was, and identified by its
        SHA-256 (the first of the two places that holds a heads file decides); refused when it is gone or has changed
        since (a new query embedded with other heads would land in another space)."""
        from galclip.provenance import sha256_file

        tried = self._candidates("heads")
        found = [p for p in tried if p.exists()]
        # the first heads file found decides: heads retrained beside the index make it stale even when the
        # originals still sit at the old absolute path
        if found and sha256_file(found[0]) == self.sidecar["heads_sha256"]:
            return found[0]
        if found:
            raise GalclipError(
                f"{self.path}: was built from other heads than the current {found[0]} (SHA-256 "
                "differs); rebuild the index with 'galclip index' so new queries land in the same space"
            )
        raise GalclipError(
            f"{self.path}: the heads it was built from (SHA-256 {self.sidecar['heads_sha256'][:16]}) "
            f"are not at {' nor '.join(map(str, tried))}; put them back there, or rebuild the index "
            "with 'galclip index'"
        )

    def store_path(self) -> Path:
        """Where the feature store the index was built from is (see :meth:`open_store`)."""
        return self.open_store().path

    def store_records(self) -> list[dict]:
        """The stores the index was built from, first the heads' own: {path, absolute, fingerprint, modalities, n,
        duplicates} each (an index built before ``stores`` were recorded: its one store)."""
        if self.sidecar.get("stores"):
            return list(self.sidecar["stores"])
        return [
            {
                "path": self.sidecar["store"],
                "absolute": self.sidecar.get("store_absolute"),
                "fingerprint": self.sidecar["store_fingerprint"],
                "modalities": list(MODALITIES),
                "n": len(self),
                "duplicates": 0,
            }
        ]

    def open_store(self, which: int = 0):
        """Feature store number ``which`` the index was built from (0: the heads' own; a
        :class:`~galclip.store.FeatureStore`, opened), found beside the folder or where it was, and identified by
        its fingerprint; an error naming both places when it is in neither."""
        from galclip.store import FeatureStore

        rec = self.store_records()[which]
        recorded = Path(rec["path"])
        tried = [recorded] if recorded.is_absolute() else [(self.path / recorded).resolve()]
        if rec.get("absolute") and Path(rec["absolute"]) not in tried:
            tried.append(Path(rec["absolute"]))
        for path in tried:
            if (path / "zarr.json").exists():
                try:
                    store = FeatureStore.open(path)
                    if store.fingerprint() == rec["fingerprint"]:
                        return store
                except GalclipError:
                    continue
        raise GalclipError(
            f"{self.path}: the feature store it was built from (fingerprint "
            f"{rec['fingerprint']}) is not at {' nor '.join(map(str, tried))}; put it "
            "back there (the index finds it relative to its own folder too), or rebuild the index"
        )

    def embedding_map(self, max_points: int = 20000, seed: int = 0) -> np.ndarray:
        """(N_image, 2) float32 UMAP coordinates of the image embeddings, in the order of ``members("image")``: the
        folder's ``map.npy`` written by ``galclip index``, else fitted now (on a seeded subsample of ``max_points``,
        the rest transformed)."""
        path = self.path / MAP_FILE
        n = self.count("image")
        if path.exists():
            coords = np.load(path)
            if coords.shape == (n, 2):
                return coords
            logger.warning("%s has shape %s, expected (%d, 2): fitting the map again", path, coords.shape, n)
        from galclip.index.embedding_map import fit_umap

        logger.info("no %s in %s: fitting the UMAP map of %d galaxies (once)", MAP_FILE, self.path, n)
        return fit_umap(np.asarray(self.embeddings["image"]), max_points, seed)

    def nearest(
        self, vectors: np.ndarray, target: str, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(m, 128) L2-normalised vectors -> (similarities (m, k), row positions (m, k), -1 where fewer) in
        ``target``'s index; ``allowed``: (N,) bool over rows, the galaxies a result may be (applied before the top k
        is cut)."""
        _check_modality("target", target)
        key = f"{target}{MEMBER_SUFFIX}"
        members = self.rows.get(key)  # None: every galaxy has it, vector id = row position (no 8 B/row array)
        if allowed is not None and members is not None:
            allowed = np.asarray(allowed, bool)[members]
        sims, ids = self.indexes[target].search(np.ascontiguousarray(vectors, np.float32), k, allowed=allowed)
        if members is None:
            return sims, ids
        return sims, np.where(ids >= 0, members[np.clip(ids, 0, max(0, len(members) - 1))], -1)

    def reference(self, modality: str) -> Reference | None:
        """The zero-shot predictor's reference set in ``modality`` (the labelled train-split galaxies), built once
        with its interval calibration at k = 16 (so whoever builds it, the service at start, pays for both); None
        when the index has none."""
        if modality not in self._cache:
            try:
                self._cache[modality] = load_reference(self, modality)
                self._cache[modality].stretch(DEFAULT_K)
            except GalclipError as err:
                logger.info("no zero-shot prediction: %s", err)
                self._cache[modality] = None
        return self._cache[modality]

    def predict(
        self, vectors: np.ndarray, modality: str, query_targetid: np.ndarray | None = None
    ) -> list[dict | None]:
        """The zero-shot prediction record of each (m, 128) unit vector of ``modality`` (``Reference.predict`` at
        k = 16; a query that is a reference galaxy is left out of its own neighbours); None each without a reference
        set, or with one smaller than k."""
        ref = self.reference(modality)
        if ref is None or len(ref) < DEFAULT_K + 1:
            return [None] * len(vectors)
        pred = ref.predict(np.asarray(vectors, np.float32), DEFAULT_K, query_targetid)
        return [pred.record(i) for i in range(len(vectors))]

    def search(
        self,
        targetid: int,
        query: str = "image",
        target: str = "image",
        k: int = 5,
        vector: np.ndarray | None = None,
        source: str = "index",
        survey_redshift: float | None = None,
        filters: Filters | None = None,
        dedup_arcsec: float = DEDUP_ARCSEC,
    ) -> dict:
        """The ``k`` galaxies nearest to galaxy ``targetid``'s ``query`` modality ("image", "spectrum" or "both": the
        mean of its two unit embeddings, renormalised) in ``target``'s index, with its zero-shot prediction.

        Without ``vector`` the galaxy must be indexed (it is left out of its own results). With ``vector`` ((1, 128)
        unit vector, e.g. from :func:`galclip.embed_survey.embed_survey_pair`) that vector is the query, from
        ``source``. ``filters``: which galaxies a result may be, applied before the top k is cut. ``dedup_arcsec``:
        a result closer on the sky than this to a better-ranked one (or to the query galaxy) is dropped; 0 keeps
        all."""
        _check_modality("query", query, both=True)
        _check_modality("target", target)
        if k < 1:
            raise GalclipError(f"k must be at least 1, got {k}")
        if vector is not None:
            vector, pos = np.asarray(vector, np.float32).reshape(1, -1), self.find(targetid)
        else:
            pos = self.position(targetid)
            vector, survey_redshift, source = self.query_vector(query, pos), None, "index"
        exclude = pos if (pos >= 0 and query in (target, BOTH) and self.vector_ids(target, [pos])[0] >= 0) else -1
        allowed = self._allowed(filters)
        pool = self.count(target) if allowed is None else int((allowed & self.has(target)).sum())
        others = pool - (1 if exclude >= 0 and (allowed is None or allowed[exclude]) else 0)
        if allowed is None and k > others:
            raise GalclipError(
                f"k {k}: the index holds {len(self)} galaxies ({others} besides the query in its {target} index); "
                f"ask for k {others} or fewer"
            )
        neighbours, dropped = self._neighbours(vector, target, k, exclude, pos, allowed, dedup_arcsec)
        known = pos >= 0
        record = {
            "query": {
                "targetid": int(targetid),
                "modality": query,
                "source": source,
                **(self.label_record(pos) if known else dict.fromkeys(self.label_names)),
                **({} if known else {"redshift": survey_redshift}),
            },
            "target": target,
            "neighbours": neighbours,
            "prediction": self.predict(vector, "image" if query == BOTH else query, np.array([targetid], np.int64))[0],
            "labels": self.label_titles(),
            "dedup": {"radius_arcsec": float(dedup_arcsec), "dropped": dropped},
        }
        if filters:
            record["filters"] = _filter_record(filters, others, k)
        return record

    def search_position(self, ra: float, dec: float, radius_arcsec: float = SNAP_ARCSEC, **kwargs) -> dict:
        """:meth:`search` from the indexed galaxy nearest to (ra, dec) in degrees within ``radius_arcsec``; its JSON
        names that galaxy as the query, with the position asked for and the separation."""
        pos, sep = self.locate(ra, dec, radius_arcsec)
        record = self.search(int(self.rows["targetid"][pos]), **kwargs)
        record["query"]["position"] = {"ra": float(ra), "dec": float(dec), "separation_arcsec": sep}
        return record

    def search_embedding(
        self,
        vector: np.ndarray,
        target: str = "image",
        k: int = 5,
        filters: Filters | None = None,
        dedup_arcsec: float = DEDUP_ARCSEC,
    ) -> dict:
        """The ``k`` galaxies nearest to a 128-d vector (normalised here) in ``target``'s index; its zero-shot
        prediction is from the reference set of ``target``'s modality."""
        _check_modality("target", target)
        vector = np.asarray(vector, dtype=np.float64).reshape(1, -1)
        d = int(self.sidecar["dim"])
        if vector.shape[1] != d or not np.isfinite(vector).all():
            raise GalclipError(
                f"the query vector must hold {d} finite numbers, got {vector.shape[1]}"
                + ("" if np.isfinite(vector).all() else " with NaN/inf")
            )
        if k < 1:
            raise GalclipError(f"k must be at least 1, got {k}")
        unit = l2_normalise(vector)
        allowed = self._allowed(filters)
        neighbours, dropped = self._neighbours(unit, target, k, allowed=allowed, dedup_arcsec=dedup_arcsec)
        record = {
            "query": {"targetid": None, "modality": None, "source": "embedding", **dict.fromkeys(self.label_names)},
            "target": target,
            "neighbours": neighbours,
            "prediction": self.predict(unit, target)[0],
            "labels": self.label_titles(),
            "dedup": {"radius_arcsec": float(dedup_arcsec), "dropped": dropped},
        }
        if filters:
            record["filters"] = _filter_record(filters, int((allowed & self.has(target)).sum()), k)
        return record

    def _allowed(self, filters: Filters | None) -> np.ndarray | None:
        """(N,) bool of the galaxies ``filters`` let through; None without filters."""
        if not filters:
            return None
        return filters.mask(self.rows, {m: self.has(m) for m in MODALITIES}, self.label_names)

    def neighbour_record(self, rank: int, similarity: float, pos: int, partner: int = -1) -> dict:
        """One result row: rank, similarity, targetid, every label, which modalities it has, is_partner."""
        return {
            "rank": rank,
            "similarity": float(similarity),
            "targetid": int(self.rows["targetid"][pos]),
            **self.label_record(pos),
            "has_image": bool(self.vector_ids("image", [pos])[0] >= 0),
            "has_spectrum": bool(self.vector_ids("spectrum", [pos])[0] >= 0),
            "is_partner": bool(pos == partner),
        }

    def _neighbours(
        self,
        vector: np.ndarray,
        target: str,
        k: int,
        exclude: int = -1,
        partner: int = -1,
        allowed: np.ndarray | None = None,
        dedup_arcsec: float = 0.0,
    ) -> tuple[list[dict], int]:
        """The k best results that pass ``allowed``, without ``exclude`` and without duplicates on the sky: (records,
        how many were dropped as duplicates). Fetches more while duplicates leave fewer than k."""
        ra, dec = (self.rows["ra"], self.rows["dec"]) if "ra" in self.rows and dedup_arcsec > 0 else (None, None)
        available = self.count(target)
        fetch = k + (exclude >= 0) + (k if ra is not None else 0)
        while True:
            fetch = min(fetch, available)
            sims, ids = self.nearest(vector, target, max(1, fetch), allowed)
            hit = (ids[0] >= 0) & (ids[0] != exclude)
            s, pos = sims[0][hit], ids[0][hit]
            keep = dedupe(pos, ra, dec, dedup_arcsec, anchor=partner)
            if keep.sum() >= k or fetch >= available or (ids[0] < 0).any():
                break
            fetch *= 4
        kept = np.flatnonzero(keep)[:k]
        dropped = int((~keep[: kept[-1] + 1]).sum()) if len(kept) else int((~keep).sum())
        return [self.neighbour_record(r + 1, s[j], int(pos[j]), partner) for r, j in enumerate(kept)], dropped


def _filter_record(filters: Filters, passing: int, k: int) -> dict:
    """A filtered search's ``filters`` record: the filters, how many galaxies pass, and why fewer than k come back
    (``reason``, None when k do)."""
    reason = None
    if passing == 0:
        reason = f"no indexed galaxy passes the filters ({filters.describe()})"
    elif passing < k:
        reason = f"only {passing} indexed galaxies pass the filters ({filters.describe()})"
    return {**filters.as_dict(), "passing": passing, "reason": reason}


def open_index(path: str | Path, verify_hashes: bool = False, cls: type[Index] = Index) -> Index:
    """Open an index folder written by ``galclip index`` (:func:`galclip.index.build.build_indexes`).

    Every file's size is checked against ``index.json`` each time, and its SHA-256 with ``verify_hashes`` (the
    search service does so at start, predict and ``galclip check INDEX`` always); a mismatch refuses to load.
    ``cls``: the class to open it as (an :class:`Index` subclass, e.g. :class:`galclip.discover.Index`)."""
    import faiss

    path = Path(path)
    sidecar = read_sidecar(path)
    problems = verify_files(path, sidecar, verify_hashes)
    if problems:
        raise DamagedDataError(
            f"{problems[0]}: the index is damaged; {REPAIR}"
            + (f" ({len(problems) - 1} more file(s) differ)" if len(problems) > 1 else "")
        )
    indexes = {}
    try:
        for m, rec in sidecar["indexes"].items():
            index = faiss.read_index(str(path / rec["file"]))
            spec = IndexSpec.from_record(rec)
            if spec.kind != "flat":
                faiss.extract_index_ivf(index).nprobe = rec["nprobe"]
            indexes[m] = VectorIndex(index, spec, VectorFile(path / rec["embeddings"]))
        with np.load(path / ROWS_FILE) as z:
            rows = {k: z[k] for k in z.files}
        # memory maps: only the pages a query touches are read (the re-rank reads rows with pread instead)
        embeddings = {m: np.load(path / rec["embeddings"], mmap_mode="r") for m, rec in sidecar["indexes"].items()}
    except Exception as err:
        raise DamagedDataError(f"{path}: an index file does not load ({type(err).__name__}: {err}); {REPAIR}") from err
    return cls(path, sidecar, indexes, rows, embeddings)
