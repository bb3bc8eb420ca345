"""2-d UMAP map of an embedding space (cosine metric)."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def fit_umap(x: np.ndarray, max_points: int = 20000, seed: int = 0) -> np.ndarray:
    """UMAP coordinates (n, 2) float32 of ``x`` (n, d).

    Fits umap-learn (cosine metric, n_neighbors = min(15, m - 1)) on a seeded subsample of
    m = min(n, max_points) rows and transforms the rest. Inputs with n < 4 get zeros and a
    warning. The first fit in a process pays 25-100 s of numba compilation.
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"x must be a 2-d (n, d) array, got shape {arr.shape}")
    if max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {max_points}")
    n = arr.shape[0]
    coords = np.zeros((n, 2), dtype=np.float32)
    if n < 4:
        logger.warning("UMAP needs at least 4 points, got %d: returning zeros", n)
        return coords
    import umap

    rng = np.random.default_rng(seed)
    fit_rows = np.sort(rng.choice(n, size=min(n, max_points), replace=False))
    m = fit_rows.size
    # spectral init needs more points than components + neighbours; tiny fits use random init
    init = "spectral" if m > 20 else "random"
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, m - 1), metric="cosine",
                        random_state=seed, init=init, n_jobs=1)  # seeded UMAP is serial anyway
    coords[fit_rows] = reducer.fit_transform(arr[fit_rows])
    rest = np.setdiff1d(np.arange(n), fit_rows, assume_unique=True)
    if rest.size:
        coords[rest] = reducer.transform(arr[rest])
    logger.info("UMAP: fitted %d points, transformed %d", m, rest.size)
    return coords
