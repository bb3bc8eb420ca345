"""Exact FAISS search over L2-normalised embeddings (report eq. 5: z / ||z||)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss

logger = logging.getLogger(__name__)

METRICS = ("ip", "l2")


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


def build_index(vectors: np.ndarray, metric: str = "ip") -> faiss.Index:
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


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` neighbours of each query row.

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
