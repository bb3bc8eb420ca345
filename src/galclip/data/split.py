"""Deterministic train/validation split that depends only on each targetid.

A pair's split is a pure function of its targetid (a SplitMix64 hash mapped to [0, 1)), so
the split of a galaxy never changes when the data set grows or is re-ordered.
"""

from __future__ import annotations

import numpy as np

TRAIN = 0
VALIDATION = 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def targetid_uniform(targetid: np.ndarray, salt: int = 0) -> np.ndarray:
    """SplitMix64 hash of targetids mapped to uniforms in [0, 1): (n,) int64 -> (n,) float64."""
    with np.errstate(over="ignore"):
        x = np.asarray(targetid).astype(np.int64).view(np.uint64) + _GOLDEN * np.uint64(salt + 1)
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_split(targetid: np.ndarray, val_fraction: float = 0.1) -> np.ndarray:
    """(n,) int64 targetids -> (n,) uint8 split codes (0 train, 1 validation)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return (targetid_uniform(targetid) < val_fraction).astype(np.uint8)
