"""The photometric-redshift field's own measures of a catalogue against the truth.

For redshift, with dz = (z_pred - z_true) / (1 + z_true):

- σ_NMAD = 1.4826 · median(|dz - median(dz)|) (Brammer et al. 2008);
- η, the outlier fraction: the share with |dz| > 0.15;
- bias = median(dz), and the mean of dz beside it.

For log M* (dex), with d = pred - true: the NMAD scatter, the standard deviation and the median bias.
For both, the coverage: the share of truths inside the stated [lo, hi] (0.68 for calibrated
16th-84th percentile intervals). Only numpy: every package may import this module.
"""

from __future__ import annotations

import numpy as np

NMAD = 1.4826  # MAD -> σ for a Gaussian
OUTLIER_DZ = 0.15  # |Δz| / (1 + z) above which a redshift is an outlier
NOMINAL_INTERVAL = 0.68  # [16th, 84th] percentiles


def _finite(*arrays: np.ndarray | None) -> np.ndarray:
    keep = np.ones(np.shape(arrays[0]), bool)
    for a in arrays:
        if a is not None:
            keep &= np.isfinite(np.asarray(a, dtype=np.float64))
    return keep


def nmad(x: np.ndarray) -> float:
    """Normalised median absolute deviation 1.4826 · median(|x - median(x)|) of (n,) values (NaN if n = 0)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return float("nan")
    return float(NMAD * np.median(np.abs(x - np.median(x))))


def coverage(true: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Share of (n,) truths inside their [lo, hi] interval (NaN if n = 0)."""
    true, lo, hi = (np.asarray(a, dtype=np.float64) for a in (true, lo, hi))
    return float(np.mean((lo <= true) & (true <= hi))) if true.size else float("nan")


def redshift_metrics(
    z_true: np.ndarray, z_pred: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None
) -> dict:
    """σ_NMAD, η, bias (median and mean of dz) and, given (n,) lo and hi, the interval coverage of (n,) redshift
    predictions; rows where any input is NaN are left out and counted in ``n``."""
    keep = _finite(z_true, z_pred, lo, hi)
    t, p = np.asarray(z_true, np.float64)[keep], np.asarray(z_pred, np.float64)[keep]
    dz = (p - t) / (1.0 + t)
    out = {
        "n": int(keep.sum()),
        "sigma_nmad": nmad(dz),
        "outlier_fraction": float(np.mean(np.abs(dz) > OUTLIER_DZ)) if dz.size else float("nan"),
        "bias": float(np.median(dz)) if dz.size else float("nan"),
        "mean_bias": float(np.mean(dz)) if dz.size else float("nan"),
    }
    if lo is not None and hi is not None:
        out["coverage"] = coverage(t, np.asarray(lo, np.float64)[keep], np.asarray(hi, np.float64)[keep])
        out["nominal_coverage"] = NOMINAL_INTERVAL
    return out


def mass_metrics(
    true: np.ndarray, pred: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None
) -> dict:
    """Scatter (NMAD and standard deviation) and median bias in dex of (n,) log M* predictions, and the
    interval coverage given lo and hi; NaN rows are left out."""
    keep = _finite(true, pred, lo, hi)
    d = np.asarray(pred, np.float64)[keep] - np.asarray(true, np.float64)[keep]
    out = {
        "n": int(keep.sum()),
        "scatter_nmad_dex": nmad(d),
        "scatter_std_dex": float(np.std(d)) if d.size else float("nan"),
        "bias_dex": float(np.median(d)) if d.size else float("nan"),
    }
    if lo is not None and hi is not None:
        out["coverage"] = coverage(
            np.asarray(true, np.float64)[keep], np.asarray(lo, np.float64)[keep], np.asarray(hi, np.float64)[keep]
        )
        out["nominal_coverage"] = NOMINAL_INTERVAL
    return out


def label_metrics(
    label: str, true: np.ndarray, pred: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None
) -> dict:
    """The field's measures for ``label`` ("redshift" or "log_mstar")."""
    return (redshift_metrics if label == "redshift" else mass_metrics)(true, pred, lo, hi)


def is_outlier(z_true: np.ndarray, z_pred: np.ndarray) -> np.ndarray:
    """(n,) bool: |z_pred - z_true| / (1 + z_true) > 0.15."""
    t = np.asarray(z_true, np.float64)
    return np.abs(np.asarray(z_pred, np.float64) - t) / (1.0 + t) > OUTLIER_DZ
