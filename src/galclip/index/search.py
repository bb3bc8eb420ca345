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
from galclip.index.format import MAP_FILE, REPAIR, ROWS_FILE, read_sidecar, verify_files
from galclip.index.zero_shot import DEFAULT_K, Reference, load_reference
from galclip.neighbours import drop_self, l2_normalise
from galclip.vocabulary import MODALITIES, label_info

logger = logging.getLogger(__name__)


class NotIndexed(GalclipError):
    """A targetid the index does not hold."""


def float_or_none(value) -> float | None:
    """A finite float, or None for NaN/inf (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


ROW_KEYS = ("row", "targetid", "split", "ra", "dec")  # the per-row arrays of rows.npz that are not labels


def _check_modality(name: str, value: str) -> None:
    if value not in MODALITIES:
        raise GalclipError(f"{name} must be one of {list(MODALITIES)}, got {value!r}")


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
    _references: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.sidecar["n"])

    @property
    def label_names(self) -> tuple[str, ...]:
        """The catalogue labels the index holds per galaxy: redshift, log_mstar, then any other the store had."""
        return tuple(k for k in self.rows if k not in ROW_KEYS)

    def label_titles(self) -> dict[str, str]:
        """label -> its title with unit, in the index's order (what pages and tables call it)."""
        return {name: label_info(name)[0] for name in self.label_names}

    def label_record(self, pos: int) -> dict[str, float | None]:
        """Galaxy ``pos``'s labels, None where it has none: {label: value}."""
        return {name: float_or_none(self.rows[name][pos]) for name in self.label_names}

    def find(self, targetid: int) -> int:
        """Position of ``targetid`` in the index, or -1 when it is not indexed."""
        hit = np.flatnonzero(self.rows["targetid"] == targetid)
        return int(hit[0]) if hit.size else -1

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

    def open_store(self):
        """The feature store the index was built from (a :class:`~galclip.store.FeatureStore`, opened), found beside
        the folder or where it was, and identified by its fingerprint; an error naming both places when it is in
        neither."""
        from galclip.store import FeatureStore

        tried = self._candidates("store")
        for path in tried:
            if (path / "zarr.json").exists():
                try:
                    store = FeatureStore.open(path)
                    if store.fingerprint() == self.sidecar["store_fingerprint"]:
                        return store
                except GalclipError:
                    continue
        raise GalclipError(
            f"{self.path}: the feature store it was built from (fingerprint "
            f"{self.sidecar['store_fingerprint']}) is not at {' nor '.join(map(str, tried))}; put it "
            "back there (the index finds it relative to its own folder too), or rebuild the index"
        )

    def embedding_map(self, max_points: int = 20000, seed: int = 0) -> np.ndarray:
        """(N, 2) float32 UMAP coordinates of the image embeddings: the folder's ``map.npy`` written by
        ``galclip index``, else fitted now (on a seeded subsample of ``max_points``, the rest transformed)."""
        path = self.path / MAP_FILE
        if path.exists():
            coords = np.load(path)
            if coords.shape == (len(self), 2):
                return coords
            logger.warning("%s has shape %s, expected (%d, 2): fitting the map again", path, coords.shape, len(self))
        from galclip.index.embedding_map import fit_umap

        logger.info("no %s in %s: fitting the UMAP map of %d galaxies (once)", MAP_FILE, self.path, len(self))
        return fit_umap(np.asarray(self.embeddings["image"]), max_points, seed)

    def nearest(self, vectors: np.ndarray, target: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(m, 128) L2-normalised vectors -> (similarities (m, k), positions (m, k)) in ``target``'s index."""
        _check_modality("target", target)
        return self.indexes[target].search(np.ascontiguousarray(vectors, np.float32), k)

    def reference(self, modality: str) -> Reference | None:
        """The zero-shot predictor's reference set in ``modality`` (the labelled train-split galaxies), built once
        with its interval calibration at k = 16 (so whoever builds it, the service at start, pays for both); None
        when the index has none."""
        if modality not in self._references:
            try:
                self._references[modality] = load_reference(self, modality)
                self._references[modality].stretch(DEFAULT_K)
            except GalclipError as err:
                logger.info("no zero-shot prediction: %s", err)
                self._references[modality] = None
        return self._references[modality]

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
    ) -> dict:
        """The ``k`` galaxies nearest to galaxy ``targetid``'s ``query`` modality, in ``target``'s index, with its
        zero-shot prediction.

        Without ``vector`` the galaxy must be indexed (an in-modal search leaves it out of its own results). With
        ``vector`` ((1, 128) unit vector, e.g. from :func:`galclip.embed_survey.embed_survey_pair`) that vector is
        the query, from ``source``."""
        _check_modality("query", query)
        _check_modality("target", target)
        if k < 1:
            raise GalclipError(f"k must be at least 1, got {k}")
        if vector is not None:
            vector, pos = np.asarray(vector, np.float32).reshape(1, -1), self.find(targetid)
        else:
            pos = self.position(targetid)
            vector, survey_redshift, source = np.asarray(self.embeddings[query][pos : pos + 1]), None, "index"
        exclude = pos if query == target else -1
        others = len(self) - (1 if exclude >= 0 else 0)
        if k > others:
            raise GalclipError(
                f"k {k}: the index holds {len(self)} galaxies ({others} besides the query in its own "
                f"modality); ask for k {others} or fewer"
            )
        neighbours = self._neighbours(vector, target, k, exclude=exclude, partner=pos)
        known = pos >= 0
        return {
            "query": {
                "targetid": int(targetid),
                "modality": query,
                "source": source,
                **(self.label_record(pos) if known else dict.fromkeys(self.label_names)),
                **({} if known else {"redshift": survey_redshift}),
            },
            "target": target,
            "neighbours": neighbours,
            "prediction": self.predict(vector, query, np.array([targetid], np.int64))[0],
            "labels": self.label_titles(),
        }

    def search_embedding(self, vector: np.ndarray, target: str = "image", k: int = 5) -> dict:
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
        return {
            "query": {"targetid": None, "modality": None, "source": "embedding", **dict.fromkeys(self.label_names)},
            "target": target,
            "neighbours": self._neighbours(unit, target, k),
            "prediction": self.predict(unit, target)[0],
            "labels": self.label_titles(),
        }

    def _neighbours(self, vector: np.ndarray, target: str, k: int, exclude: int = -1, partner: int = -1) -> list[dict]:
        sims, ids = self.nearest(vector, target, min(len(self), k + (exclude >= 0)))
        if exclude >= 0:  # an in-modal search leaves the query out of its own results
            sims, ids = drop_self(sims, ids, np.array([exclude]))
        keep = [(s, i) for s, i in zip(sims[0], ids[0]) if i >= 0][:k]
        return [
            {
                "rank": r + 1,
                "similarity": float(s),
                "targetid": int(self.rows["targetid"][i]),
                **self.label_record(i),
                "is_partner": bool(i == partner),
            }
            for r, (s, i) in enumerate(keep)
        ]


def open_index(path: str | Path, verify_hashes: bool = False) -> Index:
    """Open an index folder written by ``galclip index`` (:func:`galclip.index.build.build_indexes`).

    Every file's size is checked against ``index.json`` each time, and its SHA-256 with ``verify_hashes`` (the
    search service does so at start, predict and ``galclip check INDEX`` always); a mismatch refuses to load."""
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
            if rec["kind"] == "ivf":
                faiss.extract_index_ivf(index).nprobe = rec["nprobe"]
            indexes[m] = index
        with np.load(path / ROWS_FILE) as z:
            rows = {k: z[k] for k in z.files}
        embeddings = {m: np.load(path / rec["embeddings"], mmap_mode="r") for m, rec in sidecar["indexes"].items()}
    except Exception as err:
        raise DamagedDataError(f"{path}: an index file does not load ({type(err).__name__}: {err}); {REPAIR}") from err
    return Index(path, sidecar, indexes, rows, embeddings)
