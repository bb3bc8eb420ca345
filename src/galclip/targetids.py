"""The one targetid join: where each of some targetids sits in a set of them.

Only numpy: every package (data/ included) may import this module.
"""

from __future__ import annotations

import numpy as np


def lookup(sorted_ids: np.ndarray, ids: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
    """(m,) int64 position of each of ``ids`` in ``sorted_ids`` (ascending), -1 where absent; with ``order`` (the
    argsort that sorted them) the position in the unsorted array. The one targetid join of the package."""
    ids = np.asarray(ids)
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, np.int64)
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
    found = sorted_ids[pos] == ids
    out = (order[pos] if order is not None else pos).astype(np.int64)
    out[~found] = -1
    return out
