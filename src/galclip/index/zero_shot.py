"""The zero-shot predictor: what are a galaxy's properties, and how sure are we.

One function answers it everywhere (``galclip predict``'s catalogue, the page's query card, ``/api/search``,
``galclip search --json``, the Python API): the distance-weighted k-NN over a labelled *reference set* in the
query's own modality, giving per label the estimate and the neighbours' weighted 16th and 84th percentiles, plus the
cosine similarity of the nearest reference galaxy and the out-of-distribution flag.

The product's reference set is the index's labelled train-split galaxies in the query's modality, k = 16. A query
that is itself a reference galaxy is left out of its own neighbours (its partner, the same targetid in the other
modality, is never in a one-modality reference). It does not depend on the k or the target modality a search shows.
The evaluation report and the sweep score the seed's protocol with the same k-NN (``neighbours.knn_interval``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from galclip.errors import InputError
from galclip.neighbours import NeighbourSearch, drop_self, knn_interval
from galclip.split import TRAIN
from galclip.targetids import lookup
from galclip.vocabulary import LABELS

logger = logging.getLogger(__name__)

DEFAULT_K = 16
SELECTIONS = ("train", "all")
OOD_PERCENTILE = 1.0  # an input whose top similarity is below this percentile of the reference's own is flagged
OOD_SAMPLE = 10_000  # reference galaxies whose nearest other reference galaxy sets the threshold
INTERVAL = (0.16, 0.84)  # the neighbours' weighted quantiles reported as lo and hi (±1σ for a Gaussian)


def cosine_from_distance(dist: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors from their Euclidean distance: 1 - d² / 2."""
    return 1.0 - np.asarray(dist, np.float64) ** 2 / 2.0


@dataclass
class Predictions:
    """Zero-shot predictions of m queries: per label (value, lo, hi) each (m,) float64; similarity (m,) float64, the
    cosine similarity of the nearest reference galaxy; ood (m,) bool; k neighbours each, their distances (m, k)
    float64 and reference positions (m, k) int64, nearest first."""

    labels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]
    similarity: np.ndarray
    ood: np.ndarray
    k: int
    distances: np.ndarray
    neighbours: np.ndarray

    def record(self, i: int) -> dict:
        """Query ``i`` as JSON: {label: {"value", "lo", "hi"}, ..., "similarity", "ood", "k"}."""
        out: dict = {
            name: {"value": float(v[i]), "lo": float(lo[i]), "hi": float(hi[i])}
            for name, (v, lo, hi) in self.labels.items()
        }
        out.update(similarity=float(self.similarity[i]), ood=bool(self.ood[i]), k=self.k)
        return out


@dataclass
class Reference:
    """Labelled reference galaxies of one modality.

    targetid (n,) int64, embeddings (n, 128) float32 unit vectors, labels: name -> (n,) float64 (every one finite),
    search: exact k-NN over the embeddings, ood_threshold: cosine similarity."""

    modality: str
    selection: str
    targetid: np.ndarray
    embeddings: np.ndarray
    labels: dict[str, np.ndarray]
    search: NeighbourSearch
    ood_threshold: float

    def __len__(self) -> int:
        return len(self.targetid)

    @classmethod
    def from_arrays(
        cls,
        modality: str,
        selection: str,
        targetid: np.ndarray,
        embeddings: np.ndarray,
        labels: dict[str, np.ndarray],
        seed: int = 0,
    ) -> Reference:
        """A reference set of n galaxies: (n,) targetids, (n, d) unit vectors, name -> (n,) finite labels."""
        emb = np.ascontiguousarray(embeddings, np.float32)
        search = NeighbourSearch(emb)
        return cls(
            modality,
            selection,
            np.asarray(targetid, np.int64),
            emb,
            {name: np.asarray(y, np.float64) for name, y in labels.items()},
            search,
            ood_threshold(search, seed),
        )

    def holds(self, targetid: np.ndarray) -> np.ndarray:
        """(m,) int64 position of each targetid in the reference, -1 where it is not a reference galaxy."""
        order = np.argsort(self.targetid, kind="stable")
        return lookup(self.targetid[order], np.asarray(targetid, np.int64), order)

    def predict(self, queries: np.ndarray, k: int = DEFAULT_K, query_targetid: np.ndarray | None = None) -> Predictions:
        """Zero-shot predictions of (m, d) unit-vector queries from their ``k`` nearest reference galaxies; a query
        whose targetid (``query_targetid``, (m,)) is a reference galaxy is left out of its own neighbours."""
        if not 1 <= k <= len(self):
            raise InputError(
                f"k {k}: the {self.modality} reference set holds {len(self)} labelled galaxies "
                f"({self.selection} selection); choose k {len(self)} or fewer"
            )
        queries = np.asarray(queries)
        own = self.holds(query_targetid) if query_targetid is not None else np.full(len(queries), -1, np.int64)
        if (own >= 0).any():
            if k + 1 > len(self):
                raise InputError(
                    f"k {k}: the {self.modality} reference set holds {len(self)} labelled galaxies, "
                    f"one of them the query; choose k {len(self) - 1} or fewer"
                )
            nn_dist, nn_idx = drop_self(*self.search.query(queries, k + 1), own)
        else:
            nn_dist, nn_idx = self.search.query(queries, k)
        labels = {name: knn_interval(nn_dist, y[nn_idx], *INTERVAL) for name, y in self.labels.items()}
        similarity = cosine_from_distance(nn_dist[:, 0])
        return Predictions(labels, similarity, similarity < self.ood_threshold, k, nn_dist, nn_idx)


def load_reference(index, modality: str, selection: str = "train", seed: int = 0) -> Reference:
    """The index's labelled galaxies of ``selection`` ("train": the store's training split, the default; "all": every
    labelled galaxy), in ``modality``. ``index`` is a :class:`galclip.index.search.Index`."""
    if selection not in SELECTIONS:
        raise InputError(f"--reference must be one of {list(SELECTIONS)}, got {selection!r}")
    rows = index.rows
    labelled = np.all([np.isfinite(rows[name]) for name in LABELS], axis=0)
    chosen = labelled & (rows["split"] == TRAIN) if selection == "train" else labelled
    if not chosen.any():
        where = "training split" if selection == "train" else "index"
        raise InputError(
            f"{index.path}: no labelled reference galaxies in its {where} ({int(labelled.sum())} labelled of "
            f"{len(index)}); build the index from a store extracted with a catalogue (galclip extract --catalogue), "
            "or pass --reference all"
        )
    pos = np.flatnonzero(chosen)
    return Reference.from_arrays(
        modality,
        selection,
        rows["targetid"][pos],
        index.embeddings[modality][pos],
        {name: rows[name][pos] for name in LABELS},
        seed,
    )


def ood_threshold(search: NeighbourSearch, seed: int = 0, sample: int = OOD_SAMPLE) -> float:
    """The 1st percentile of the reference's own top similarities: for a seeded sample of up to ``sample``
    reference galaxies, the cosine similarity of the nearest *other* reference galaxy. NaN with one galaxy."""
    n = len(search)
    if n < 2:
        return float("nan")
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    dist, ids = search.query(search.train[picks], 2)
    dist, _ = drop_self(dist, ids, picks)
    return float(np.percentile(cosine_from_distance(dist[:, 0]), OOD_PERCENTILE))
