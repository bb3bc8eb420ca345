"""Retrieval metrics: rank of the true partner, recall@k, in-modal label coherence."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from galclip.neighbours import drop_self, flat_index, top_k

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 2**20


def partner_ranks(queries: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of the true partner ``targets[i]`` among all targets for query ``i``.

    queries, targets: (n, d), already L2-normalised (eq. 5), so s_ij = q_i . t_j is the
    cosine similarity. rank_i = 1 + #{j != i : s_ij >= s_ii}: ties are counted
    PESSIMISTICALLY (a collapsed embedding gets rank n, not 1). The partner score is read
    from the same similarity block as the others, so it is compared bit-for-bit. A query whose
    partner score is NaN or infinite is never a hit: it gets rank n + 1 (count those with
    :func:`non_finite_partners`). Computed in row chunks of at most ~64 MB of float32
    similarities. Returns (n,) int64.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    t = np.ascontiguousarray(targets, dtype=np.float32)
    if q.ndim != 2 or q.shape != t.shape:
        raise ValueError(f"queries and targets must be paired (n, d) arrays, got {q.shape} and {t.shape}")
    n = q.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    rows = max(1, _CHUNK_BYTES // (4 * max(n, 1)))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sims = q[start:stop] @ t.T  # (rows, n)
        local = np.arange(stop - start)
        own = sims[local, start + local]
        # ">=" counts the partner itself once, which supplies the "1 +".
        ranks[start:stop] = np.where(np.isfinite(own), np.count_nonzero(sims >= own[:, None], axis=1), n + 1)
    return ranks


def non_finite_partners(ranks: np.ndarray) -> int:
    """How many queries of :func:`partner_ranks` had a NaN or infinite partner score (rank n + 1)."""
    r = np.asarray(ranks)
    return int(np.count_nonzero(r > len(r)))


def partner_recall(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Share of queries whose partner rank is <= k, keyed "recall@k". ranks: (n,) 1-based."""
    r = np.asarray(ranks)
    if r.size == 0:
        return {f"recall@{k}": float("nan") for k in ks}
    return {f"recall@{k}": float(np.mean(r <= k)) for k in ks}


def median_rank(ranks: np.ndarray) -> float:
    """Median 1-based partner rank (NaN for no queries)."""
    r = np.asarray(ranks)
    return float(np.median(r)) if r.size else float("nan")


def neighbour_ids(emb: np.ndarray, k: int, index: faiss.Index | None = None) -> np.ndarray:
    """Top-``k`` cosine neighbours of every row of ``emb`` (n, d), itself excluded.

    emb must be L2-normalised; ``index`` is an IndexFlatIP over ``emb`` (built if None).
    Returns (n, min(k, n-1)) int64 indices, best first.
    """
    n = emb.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return np.empty((n, 0), dtype=np.int64)
    scores, ids = top_k(index if index is not None else flat_index(emb, "ip"), emb, k + 1)
    return drop_self(scores, ids, np.arange(n))[1]


def label_deltas(neighbours: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Median |label_i - label_j| over query/neighbour pairs vs over random pairs.

    neighbours: (n, k) indices from :func:`neighbour_ids`; labels: (n,), NaN ignored.
    Random pairs are drawn (seeded) among labelled rows, i != j, as many as neighbour
    pairs counted. A ratio well below 1 means neighbours share the label.
    """
    y = np.asarray(labels, dtype=np.float64)
    n, k = neighbours.shape
    out = {
        "k": int(k),
        "n_pairs": 0,
        "median_abs_delta_knn": float("nan"),
        "median_abs_delta_random": float("nan"),
        "ratio": float("nan"),
    }
    labelled = np.flatnonzero(np.isfinite(y))
    if labelled.size < 2 or k == 0:
        logger.warning("fewer than 2 labelled rows: label deltas are NaN")
        return out
    deltas = np.abs(y[:, None] - y[neighbours])[labelled].ravel()
    deltas = deltas[np.isfinite(deltas)]
    if deltas.size == 0:
        return out
    rng = np.random.default_rng(seed)
    a = rng.integers(0, labelled.size, deltas.size)
    b = (a + rng.integers(1, labelled.size, deltas.size)) % labelled.size  # b != a
    random_deltas = np.abs(y[labelled[a]] - y[labelled[b]])
    knn_med, rnd_med = float(np.median(deltas)), float(np.median(random_deltas))
    out.update(
        n_pairs=int(deltas.size),
        median_abs_delta_knn=knn_med,
        median_abs_delta_random=rnd_med,
        ratio=knn_med / rnd_med if rnd_med > 0 else float("nan"),
    )
    return out


def inmodal_neighbour_deltas(emb: np.ndarray, labels: np.ndarray, k: int = 5, seed: int = 0) -> dict[str, float]:
    """Label coherence of in-modal neighbourhoods: :func:`label_deltas` of the top-k
    neighbours (self excluded) of each row of ``emb`` (n, d, L2-normalised), labels (n,)."""
    if emb.shape[0] != np.asarray(labels).shape[0]:
        raise ValueError(f"emb has {emb.shape[0]} rows but labels has {np.asarray(labels).shape[0]}")
    return label_deltas(neighbour_ids(emb, k), labels, seed)
