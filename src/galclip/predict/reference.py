"""The labelled reference galaxies a zero-shot catalogue's k-NN runs against, and its OOD threshold."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from galclip.errors import InputError
from galclip.neighbours import NeighbourSearch, drop_self

logger = logging.getLogger(__name__)

SELECTIONS = ("train", "all")
OOD_PERCENTILE = 1.0  # an input whose top similarity is below this percentile of the reference's own is flagged
OOD_SAMPLE = 10_000  # reference galaxies whose nearest other reference galaxy sets the threshold


@dataclass
class Reference:
    """Labelled reference galaxies of one modality.

    targetid (n,) int64, embeddings (n, 128) float32 unit vectors, redshift and log_mstar (n,) float64,
    search: exact k-NN over the embeddings, ood_threshold: cosine similarity."""

    modality: str
    selection: str
    targetid: np.ndarray
    embeddings: np.ndarray
    redshift: np.ndarray
    log_mstar: np.ndarray
    search: NeighbourSearch
    ood_threshold: float
    n_excluded: int

    def __len__(self) -> int:
        return len(self.targetid)


def cosine_from_distance(dist: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors from their Euclidean distance: 1 - d² / 2."""
    return 1.0 - np.asarray(dist, np.float64) ** 2 / 2.0


def load_reference(index, modality: str, exclude: np.ndarray, selection: str = "train", seed: int = 0) -> Reference:
    """The index's labelled galaxies of ``selection`` ("train": the store's training split, the default;
    "all": every labelled galaxy), less those whose targetid is in ``exclude`` (the galaxies being predicted).

    ``index`` is a :class:`galclip.index.search.Index`; the reference vectors are its ``modality`` embeddings."""
    if selection not in SELECTIONS:
        raise InputError(f"--reference must be one of {list(SELECTIONS)}, got {selection!r}")
    rows = index.rows
    labelled = np.isfinite(rows["redshift"]) & np.isfinite(rows["log_mstar"])
    chosen = labelled & (rows["split"] == 0) if selection == "train" else labelled
    excluded = chosen & np.isin(rows["targetid"], np.asarray(exclude, np.int64))
    chosen &= ~excluded
    if not chosen.any() and excluded.any():
        raise InputError(
            f"{index.path}: every one of its {int(excluded.sum())} labelled reference galaxies ({selection} selection) is "
            "among the galaxies being predicted, so none is left to predict them from: the input holds the index's own "
            "galaxies. Predict galaxies the index does not hold (e.g. 'galclip mock --modality image --seed 7 --out "
            "new/'), or score the index's store with 'galclip evaluate STORE HEADS OUT'")
    if not chosen.any():
        where = "training split" if selection == "train" else "index"
        raise InputError(
            f"{index.path}: no labelled reference galaxies in its {where} ({int(labelled.sum())} labelled of {len(index)}"
            f"{f', {int(excluded.sum())} of them being predicted' if excluded.any() else ''}); build the index from a "
            "store extracted with a catalogue (galclip extract --catalogue), or pass --reference all")
    if excluded.any():
        logger.info("%d reference galaxies are among those being predicted: left out of the reference", int(excluded.sum()))
    pos = np.flatnonzero(chosen)
    emb = np.ascontiguousarray(index.embeddings[modality][pos], np.float32)
    search = NeighbourSearch(emb)
    return Reference(modality, selection, rows["targetid"][pos].astype(np.int64), emb,
                     rows["redshift"][pos].astype(np.float64), rows["log_mstar"][pos].astype(np.float64), search,
                     ood_threshold(search, seed), int(excluded.sum()))


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
