"""Exact nearest neighbours and the zero-shot k-NN regression.

One implementation of each number, shared by the heads (the sweep's zero-shot score), the index
and the evaluation report, so that the sweep's score and the report's are the same measure on
the same split. Only numpy and faiss: every package may import this module.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

METRICS = ("ip", "l2")
_EXTRA_CANDIDATES = 8  # FAISS float32 candidates beyond k, re-ranked in float64
_CHUNK_BYTES = 64 * 2**20


def _available_threads() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _as_f32_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """C-contiguous float32 2-d copy (or view) of ``x``, which FAISS requires."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (n, d) array, got shape {arr.shape}")
    return arr


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (report eq. 5); all-zero rows stay zero.

    x: (n, d) -> (n, d) float32. Norms are taken in float64, so no NaN or inf appears.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"x must be a 2-d (n, d) array, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def flat_index(vectors: np.ndarray, metric: str = "ip") -> faiss.Index:
    """Exact flat index over ``vectors`` (n, d): IndexFlatIP ("ip") or IndexFlatL2 ("l2").

    For cosine similarity pass L2-normalised vectors with metric "ip".
    """
    import faiss

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    data = _as_f32_matrix(vectors, "vectors")
    faiss.omp_set_num_threads(_available_threads())
    index = faiss.IndexFlatIP(data.shape[1]) if metric == "ip" else faiss.IndexFlatL2(data.shape[1])
    index.add(data)
    return index


def top_k(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of each query row in ``index``.

    queries: (m, d). Returns scores (m, k) float32 (inner products for "ip", squared L2
    distances for "l2"), best first, and ids (m, k) int64 into the indexed vectors.
    """
    import faiss

    q = _as_f32_matrix(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index holds dimension {index.d}")
    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k must be in [1, {index.ntotal}] (the number of indexed vectors), got {k}")
    faiss.omp_set_num_threads(_available_threads())
    scores, ids = index.search(q, k)
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


def drop_self(scores: np.ndarray, ids: np.ndarray, query_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own id from its (m, k+1) search results -> (m, k) scores, ids.

    query_ids: (m,) ids of the queries in the index. A row where the query itself was not
    returned (a duplicate outranked it) loses its last hit instead.
    """
    is_self = ids == np.asarray(query_ids)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    m, k = ids.shape[0], ids.shape[1] - 1
    return scores[~is_self].reshape(m, k), ids[~is_self].reshape(m, k)


def knn_regress(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int = 16) -> np.ndarray:
    """Inverse-distance-weighted mean of the ``k`` nearest training targets, equal to sklearn's
    ``KNeighborsRegressor(n_neighbors=k, weights="distance")`` (Euclidean).

    train_x: (n, d), train_y: (n,), query_x: (m, d) -> (m,) float64.
    y_hat = sum_j y_j / d_j / sum_j 1 / d_j over the k nearest neighbours; a query with one or
    more neighbours at distance 0 gets the plain mean of those neighbours' targets (sklearn's
    rule). FAISS exact L2 search proposes k + 8 candidates, whose distances are recomputed in
    float64 and re-ranked, so float32 near-ties at the k-th neighbour do not change the answer.
    Exact distance ties at the k-th place go to the lower training index.
    """
    nn_dist, nn_idx = knn_neighbours(train_x, query_x, k)
    return weighted_mean(nn_dist, np.asarray(train_y, dtype=np.float64)[nn_idx])


def knn_neighbours(train_x: np.ndarray, query_x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest training rows of each query, re-ranked in float64.

    train_x: (n, d), query_x: (m, d) -> distances (m, k) float64 and training indices (m, k) int64.
    """
    return NeighbourSearch(train_x).query(query_x, k)


class NeighbourSearch:
    """Exact Euclidean k-NN over a fixed training set (n, d): built once, queried block by block.

    FAISS exact L2 search proposes k + 8 candidates per query, whose distances are recomputed in
    float64 and re-ranked; exact distance ties go to the lower training index."""

    def __init__(self, train_x: np.ndarray):
        self.train = np.asarray(train_x, dtype=np.float64)
        if self.train.ndim != 2:
            raise ValueError(f"train_x must be a 2-d (n, d) array, got shape {self.train.shape}")
        self.index = flat_index(self.train, "l2")

    def __len__(self) -> int:
        return self.train.shape[0]

    def query(self, query_x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """query_x (m, d) -> distances (m, k) float64 and training indices (m, k) int64, nearest first."""
        tx = self.train
        qx = np.asarray(query_x, dtype=np.float64)
        if qx.ndim != 2 or tx.shape[1] != qx.shape[1]:
            raise ValueError(f"train_x and query_x must be (n, d) and (m, d), got {tx.shape} and {qx.shape}")
        n = tx.shape[0]
        if not 1 <= k <= n:
            raise ValueError(f"k-NN needs 1 <= k <= n_train: k={k} but only {n} training rows")
        if qx.shape[0] == 0:
            return np.empty((0, k), np.float64), np.empty((0, k), np.int64)
        n_cand = min(n, k + _EXTRA_CANDIDATES)
        _, cand = top_k(self.index, qx, n_cand)  # (m, n_cand)
        dist = np.empty(cand.shape, dtype=np.float64)
        rows = max(1, _CHUNK_BYTES // (8 * n_cand * tx.shape[1]))
        for start in range(0, qx.shape[0], rows):  # exact float64 distances, ~64 MB at a time
            sl = slice(start, start + rows)
            dist[sl] = np.sqrt(np.sum((qx[sl, None, :] - tx[cand[sl]]) ** 2, axis=2))
        order = np.lexsort((cand, dist))[:, :k]  # by distance, then by training index
        return np.take_along_axis(dist, order, axis=1), np.take_along_axis(cand, order, axis=1)


def idw_weights(nn_dist: np.ndarray) -> np.ndarray:
    """Inverse-distance weights (m, k) of (m, k) neighbour distances, sklearn's ``weights="distance"``:
    a row with neighbours at distance 0 weighs those neighbours 1 and the rest 0."""
    zero = nn_dist == 0
    with np.errstate(divide="ignore"):
        weights = 1.0 / np.asarray(nn_dist, dtype=np.float64)
    has_zero = zero.any(axis=1)
    weights[has_zero] = zero[has_zero]
    return weights


def weighted_mean(nn_dist: np.ndarray, nn_y: np.ndarray) -> np.ndarray:
    """Inverse-distance-weighted mean per row: (m, k) distances and targets -> (m,) float64.

    A row with neighbours at distance 0 gets the plain mean of those neighbours' targets."""
    weights = idw_weights(nn_dist)
    return np.sum(weights * nn_y, axis=1) / np.sum(weights, axis=1)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Per-row weighted ``q`` quantile, inverted-CDF rule: (m, k) values and weights -> (m,) float64.

    The smallest value whose share of the row's total weight at or below it reaches q (numpy's
    ``quantile(..., weights=..., method="inverted_cdf")`` row by row). Rows of zero total weight give NaN."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if v.shape[0] == 0:
        return np.empty(0)
    order = np.argsort(v, axis=1, kind="stable")
    v, w = np.take_along_axis(v, order, 1), np.take_along_axis(w, order, 1)
    total = w.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        cdf = np.cumsum(w, axis=1) / total
    # guard float round-off in the cumulative sum at the top of the distribution
    at = np.minimum(np.argmax(cdf >= q - 1e-12, axis=1), v.shape[1] - 1)
    out = v[np.arange(v.shape[0]), at]
    out[~(total[:, 0] > 0)] = np.nan
    return out


def knn_interval(
    nn_dist: np.ndarray, nn_y: np.ndarray, lower: float = 0.16, upper: float = 0.84
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distance-weighted k-NN estimate and its interval: (m, k) distances and neighbour targets ->
    (mean, lo, hi), each (m,) float64; lo and hi are the neighbours' weighted ``lower`` and ``upper`` quantiles
    (the 16th and 84th percentiles by default, ±1σ for a Gaussian)."""
    weights = idw_weights(nn_dist)
    mean = np.sum(weights * nn_y, axis=1) / np.sum(weights, axis=1)
    return mean, weighted_quantile(nn_y, weights, lower), weighted_quantile(nn_y, weights, upper)


def split_for_knn(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic seeded split of ``range(n)`` into sorted (train_idx, test_idx) int64.

    round(n * test_fraction) rows go to test, kept within [1, n-1] when n >= 2.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(n * test_fraction))
    if n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_test:]).astype(np.int64), np.sort(perm[:n_test]).astype(np.int64)


def zero_shot_split(labels: dict[str, np.ndarray], test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The zero-shot split of n evaluation pairs: rows (train (a,), test (b,)) among those with any label.

    labels: name -> (n,) with NaN where unlabelled. The report and the sweep both score on it."""
    labelled = np.flatnonzero(np.any([np.isfinite(y) for y in labels.values()], axis=0))
    train_pos, test_pos = split_for_knn(labelled.size, test_fraction, seed)
    return labelled[train_pos], labelled[test_pos]


def embedding_sources(
    emb_image: np.ndarray, emb_spectrum: np.ndarray, train: np.ndarray, test: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """k-NN sources from (n, 128) L2-normalised embeddings: name -> (fit rows, query rows).

    "cross" fits on spectrum embeddings and queries with images (the image-only use case);
    "cross_sp2im" is the reverse."""
    return {
        "image": (emb_image[train], emb_image[test]),
        "spectrum": (emb_spectrum[train], emb_spectrum[test]),
        "cross": (emb_spectrum[train], emb_image[test]),
        "cross_sp2im": (emb_image[train], emb_spectrum[test]),
    }


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot (NaN with < 2 rows or constant truth)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred shapes differ: {t.shape} vs {p.shape}")
    if t.size < 2:
        return float("nan")
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(np.sum((t - p) ** 2)) / ss_tot


def zero_shot_table(
    sources: dict[str, tuple[np.ndarray, np.ndarray]],
    targets: dict[str, tuple[np.ndarray, np.ndarray]],
    k: int = 16,
) -> dict[str, dict[str, dict]]:
    """k-NN regression of every target from every source.

    sources[name] = (train_x (n, d), query_x (m, d)); targets[name] = (train_y (n,), test_y (m,)).
    Rows whose label is not finite are dropped (from the fit or from the queries) per target.
    Returns table[source][target] = {"r2": float, "pred": (m',), "true": (m',), "lo": (m',), "hi": (m',)},
    lo and hi the neighbours' weighted 16th and 84th percentiles (``knn_interval``). A target with
    fewer than k + 1 labelled fit rows (or no labelled query) has r2 NaN and empty arrays for every
    source, with one warning per call naming the targets.
    """
    targets = {
        name: (np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)) for name, (a, b) in targets.items()
    }
    too_few = {
        name: (int(np.isfinite(a).sum()), int(np.isfinite(b).sum()))
        for name, (a, b) in targets.items()
        if np.isfinite(a).sum() < k + 1 or np.isfinite(b).sum() < 1
    }
    if too_few:  # evaluate and the sweep say why once, with what is needed (zero_shot_shortfall)
        logger.debug(
            "zero-shot k-NN at k=%d: too few labelled rows for %s (fit rows, query rows: %s; needs more than "
            "k fit rows); R² recorded as NaN",
            k,
            ", ".join(too_few),
            ", ".join(map(str, too_few.values())),
        )
    table: dict[str, dict[str, dict]] = {}
    for s_name, (train_x, query_x) in sources.items():
        table[s_name] = {}
        for t_name, (train_y, test_y) in targets.items():
            if len(train_y) != len(train_x) or len(test_y) != len(query_x):
                raise ValueError(f"source {s_name!r} and target {t_name!r} have different row counts")
            if t_name in too_few:
                table[s_name][t_name] = {
                    "r2": float("nan"),
                    "pred": np.empty(0),
                    "true": np.empty(0),
                    "lo": np.empty(0),
                    "hi": np.empty(0),
                }
                continue
            fit, ask = np.isfinite(train_y), np.isfinite(test_y)
            nn_dist, nn_idx = knn_neighbours(np.asarray(train_x)[fit], np.asarray(query_x)[ask], k)
            pred, lo, hi = knn_interval(nn_dist, train_y[fit][nn_idx])
            true = test_y[ask]
            table[s_name][t_name] = {"r2": r2_score(true, pred), "pred": pred, "true": true, "lo": lo, "hi": hi}
    return table


def zero_shot_shortfall(labels: dict[str, np.ndarray], config, test_fraction: float = 0.1) -> dict | None:
    """Why zero-shot R² cannot be computed on these test pairs, or None when it can for every target.

    ``labels``: name -> (n,) labels of the test pairs (NaN unlabelled); ``config`` an ``EvalConfig`` (k,
    knn_test_fraction, seed). The k-NN fits on one seeded half of the labelled pairs (``zero_shot_split``) and needs
    more than k fit rows per target. Returns {"fit_rows": {target:
    n}, "needed_labelled": L, "max_k": k, "note": the sentence the report and the CLI show}."""
    import math

    train, _ = zero_shot_split(labels, config.knn_test_fraction, config.seed)
    fit = {name: int(np.isfinite(y[train]).sum()) for name, y in labels.items()}
    if all(n >= config.k + 1 for n in fit.values()):
        return None
    n = len(next(iter(labels.values())))
    labelled = int(np.any([np.isfinite(y) for y in labels.values()], axis=0).sum())
    needed = math.ceil((config.k + 1) / (1 - config.knn_test_fraction))
    share = labelled / n if n else 0.0
    pairs = (
        f", about {math.ceil(needed / (test_fraction * share)):,} pairs in all at this store's test fraction "
        f"({test_fraction:g}) and labelled share ({share:.0%})"
        if share > 0
        else ""
    )
    max_k = max(min(fit.values()) - 1, 0)
    note = (
        f"zero-shot R² needs more than k = {config.k} labelled pairs in the k-NN's fit half: the test split has "
        f"{labelled} labelled pair(s), the fit half {min(fit.values())}. It needs {needed} labelled test pairs"
        f"{pairs}; or use -k {max_k} or less"
        if max_k >= 1
        else f"zero-shot R² needs more than k = {config.k} labelled pairs in the k-NN's fit half: the test split has "
        f"{labelled} labelled pair(s), the fit half {min(fit.values())}. It needs {needed} labelled test pairs"
        f"{pairs}"
    )
    return {"fit_rows": fit, "needed_labelled": needed, "max_k": max_k, "note": note}
