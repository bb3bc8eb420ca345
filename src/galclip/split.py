"""Deterministic train / selection / test split that depends only on each targetid.

A pair's split is a pure function of its targetid (a SplitMix64 hash u mapped to [0, 1)), so
the split of a galaxy never changes when the data set grows or is re-ordered:

- test (code 1): u < test_fraction (0.1, the seed's 10% of pairs): every number the report,
  ``metrics.json``, the sweep table and predict's truth page give;
- selection (code 2): test_fraction <= u < test_fraction + selection_fraction (0.1): the
  learning-rate schedule, early stopping, the best epoch and the sweep's choice;
- train (code 0): the rest, which fits the heads.

The test split is exactly the validation split of galclip 0.1/0.2 stores (codes 0 and 1), so
those stores need no re-extraction: their selection split is carved out of their train split.
Only numpy: every package (the store included) may import this module.
"""

from __future__ import annotations

import numpy as np

TRAIN = 0
TEST = 1
SELECTION = 2
SPLIT_NAMES = {TRAIN: "train", TEST: "test", SELECTION: "selection"}
TEST_FRACTION = 0.1
SELECTION_FRACTION = 0.1

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


def assign_split(
    targetid: np.ndarray, test_fraction: float = TEST_FRACTION, selection_fraction: float = SELECTION_FRACTION
) -> np.ndarray:
    """(n,) int64 targetids -> (n,) uint8 split codes: 0 train, 1 test, 2 selection."""
    if not 0.0 < test_fraction < 1.0 or not 0.0 <= selection_fraction < 1.0 - test_fraction:
        raise ValueError(
            f"test_fraction must be in (0, 1) and selection_fraction in [0, 1 - test_fraction), got "
            f"{test_fraction} and {selection_fraction}"
        )
    u = targetid_uniform(targetid)
    codes = np.full(len(u), TRAIN, np.uint8)
    codes[u < test_fraction + selection_fraction] = SELECTION
    codes[u < test_fraction] = TEST
    return codes


def split_fractions(provenance: dict) -> tuple[float, float]:
    """(test_fraction, selection_fraction) a store's provenance records; a galclip 0.1/0.2 store recorded only
    its validation fraction, which is its test split, and gets the default selection fraction."""
    split = provenance.get("split") or {}
    test = float(split.get("test_fraction", split.get("val_fraction", TEST_FRACTION)))
    return test, float(split.get("selection_fraction", SELECTION_FRACTION))
