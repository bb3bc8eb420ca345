"""Zero-shot k-NN regression on FAISS neighbours, equal to sklearn's
``KNeighborsRegressor(n_neighbors=k, weights="distance")`` (Euclidean)."""

from __future__ import annotations

import logging

import numpy as np

from galclip.evaluate.search import build_index, search

logger = logging.getLogger(__name__)

_EXTRA_CANDIDATES = 8  # FAISS float32 candidates beyond k, re-ranked in float64
_CHUNK_BYTES = 64 * 2**20


def knn_regress(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, k: int = 16) -> np.ndarray:
    """Inverse-distance-weighted mean of the ``k`` nearest training targets.

    train_x: (n, d), train_y: (n,), query_x: (m, d) -> (m,) float64.
    y_hat = sum_j y_j / d_j / sum_j 1 / d_j over the k nearest (Euclidean) neighbours; a
    query with one or more neighbours at distance 0 gets the plain mean of those
    neighbours' targets (sklearn's rule). FAISS exact L2 search proposes k + 8 candidates,
    whose distances are recomputed in float64 and re-ranked, so float32 near-ties at the
    k-th neighbour do not change the answer. Exact distance ties at the k-th place go to
    the lower training index (sklearn documents its own choice as training-order dependent).
    """
    tx = np.asarray(train_x, dtype=np.float64)
    ty = np.asarray(train_y, dtype=np.float64)
    qx = np.asarray(query_x, dtype=np.float64)
    if tx.ndim != 2 or qx.ndim != 2 or tx.shape[1] != qx.shape[1]:
        raise ValueError(f"train_x and query_x must be (n, d) and (m, d), got {tx.shape} and {qx.shape}")
    if ty.shape != (tx.shape[0],):
        raise ValueError(f"train_y must have shape ({tx.shape[0]},), got {ty.shape}")
    n = tx.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-NN needs 1 <= k <= n_train: k={k} but only {n} training rows")
    if qx.shape[0] == 0:
        return np.empty(0, dtype=np.float64)
    n_cand = min(n, k + _EXTRA_CANDIDATES)
    _, cand = search(build_index(tx, "l2"), qx, n_cand)  # (m, n_cand)
    dist = np.empty(cand.shape, dtype=np.float64)
    rows = max(1, _CHUNK_BYTES // (8 * n_cand * tx.shape[1]))
    for start in range(0, qx.shape[0], rows):  # exact float64 distances, ~64 MB at a time
        sl = slice(start, start + rows)
        dist[sl] = np.sqrt(np.sum((qx[sl, None, :] - tx[cand[sl]]) ** 2, axis=2))
    order = np.lexsort((cand, dist))[:, :k]  # by distance, then by training index
    nn_dist = np.take_along_axis(dist, order, axis=1)
    nn_y = ty[np.take_along_axis(cand, order, axis=1)]
    zero = nn_dist == 0
    with np.errstate(divide="ignore"):
        weights = 1.0 / nn_dist
    has_zero = zero.any(axis=1)
    weights[has_zero] = zero[has_zero]
    return np.sum(weights * nn_y, axis=1) / np.sum(weights, axis=1)


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
    Returns table[source][target] = {"r2": float, "pred": (m',), "true": (m',)}; with fewer
    than k + 1 labelled training rows the entry has r2 NaN and empty arrays (logged warning).
    """
    table: dict[str, dict[str, dict]] = {}
    for s_name, (train_x, query_x) in sources.items():
        table[s_name] = {}
        for t_name, (train_y, test_y) in targets.items():
            train_y = np.asarray(train_y, dtype=np.float64)
            test_y = np.asarray(test_y, dtype=np.float64)
            if len(train_y) != len(train_x) or len(test_y) != len(query_x):
                raise ValueError(f"source {s_name!r} and target {t_name!r} have different row counts")
            fit, ask = np.isfinite(train_y), np.isfinite(test_y)
            if fit.sum() < k + 1 or ask.sum() < 1:
                logger.warning("zero-shot %s -> %s: %d labelled train rows and %d test rows (need > k=%d "
                               "and >= 1); R2 recorded as NaN", s_name, t_name, fit.sum(), ask.sum(), k)
                table[s_name][t_name] = {"r2": float("nan"), "pred": np.empty(0), "true": np.empty(0)}
                continue
            pred = knn_regress(np.asarray(train_x)[fit], train_y[fit], np.asarray(query_x)[ask], k)
            true = test_y[ask]
            table[s_name][t_name] = {"r2": r2_score(true, pred), "pred": pred, "true": true}
    return table
