"""2-d UMAP map of an embedding space (cosine metric), fitted on a subsample and cached on disk."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# part of every cache key: raise it whenever fit_umap's fixed settings (metric, neighbours, init) change
CACHE_VERSION = 1


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
    reducer = umap.UMAP(
        n_components=2, n_neighbors=min(15, m - 1), metric="cosine", random_state=seed, init=init, n_jobs=1
    )  # seeded UMAP is serial anyway
    coords[fit_rows] = reducer.fit_transform(arr[fit_rows])
    rest = np.setdiff1d(np.arange(n), fit_rows, assume_unique=True)
    if rest.size:
        coords[rest] = reducer.transform(arr[rest])
    logger.info("UMAP: fitted %d points, transformed %d", m, rest.size)
    return coords


def umap_cache_key(x: np.ndarray, max_points: int, seed: int) -> str:
    """SHA-256 over the exact input bytes (n, d) float32, its shape, the fit settings and umap-learn's version."""
    import umap

    arr = np.ascontiguousarray(x, dtype=np.float32)
    h = hashlib.sha256(f"{CACHE_VERSION}|{arr.shape}|{max_points}|{seed}|umap-{umap.__version__}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:32]


def cached_umap(
    x: np.ndarray, max_points: int = 20000, seed: int = 0, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, bool]:
    """``fit_umap`` through an on-disk cache: (coords (n, 2), True when read from the cache).

    The cache file ``umap-KEY.npy`` in ``cache_dir`` is keyed by the embeddings' bytes and the fit
    settings, so re-running an evaluation (or re-rendering a report) skips the fit, and any change of
    heads, store or settings misses the cache. ``cache_dir=None`` disables it.
    """
    from galclip.atomic import atomic_path

    if cache_dir is None:
        return fit_umap(x, max_points, seed), False
    path = Path(cache_dir) / f"umap-{umap_cache_key(x, max_points, seed)}.npy"
    if path.exists():
        try:
            coords = np.load(path)
            if coords.shape == (len(x), 2):
                logger.info("UMAP: %d points from the cache %s", len(x), path)
                return coords, True
        except (OSError, ValueError) as err:
            logger.warning("UMAP cache %s unreadable (%s): fitting again", path, err)
    coords = fit_umap(x, max_points, seed)
    try:
        with atomic_path(path) as tmp:
            np.save(tmp, coords)
    except OSError as err:  # a read-only cache costs the next run a fit, nothing else
        logger.warning("UMAP cache %s not writable (%s)", path, err)
    return coords, False
