"""The photometric-redshift field's own measures of a catalogue against the truth.

For redshift, with dz = (z_pred - z_true) / (1 + z_true):

- σ_NMAD = 1.4826 · median(|dz - median(dz)|) (Brammer et al. 2008);
- η, the outlier fraction: the share with |dz| > 0.15;
- bias = median(dz), and the mean of dz beside it.

For every other label (log M*, log Z_MW and log sSFR in dex, age in Gyr), with d = pred - true: the NMAD
scatter, the standard deviation and the median bias. For all, the coverage: the share of truths inside the stated
[lo, hi] (0.68 for calibrated 16th-84th percentile intervals). Only numpy and the vocabulary: every package may
import this module.
"""

from __future__ import annotations

import numpy as np

from galclip.vocabulary import label_info

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


def scatter_metrics(
    true: np.ndarray,
    pred: np.ndarray,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
    suffix: str = "_dex",
) -> dict:
    """Scatter (NMAD and standard deviation) and median bias of (n,) predictions in the label's own unit (dex for
    a log quantity: ``suffix`` names it in the keys), and the interval coverage given lo and hi; NaN rows are left
    out."""
    keep = _finite(true, pred, lo, hi)
    d = np.asarray(pred, np.float64)[keep] - np.asarray(true, np.float64)[keep]
    out = {
        "n": int(keep.sum()),
        f"scatter_nmad{suffix}": nmad(d),
        f"scatter_std{suffix}": float(np.std(d)) if d.size else float("nan"),
        f"bias{suffix}": float(np.median(d)) if d.size else float("nan"),
    }
    if lo is not None and hi is not None:
        out["coverage"] = coverage(
            np.asarray(true, np.float64)[keep], np.asarray(lo, np.float64)[keep], np.asarray(hi, np.float64)[keep]
        )
        out["nominal_coverage"] = NOMINAL_INTERVAL
    return out


def mass_metrics(
    true: np.ndarray, pred: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None
) -> dict:
    """Scatter and median bias in dex of (n,) log M* predictions (:func:`scatter_metrics`)."""
    return scatter_metrics(true, pred, lo, hi, "_dex")


def measure_keys(label: str) -> tuple[str, ...]:
    """The keys of :func:`label_metrics` a table shows for ``label``, in order."""
    kind = label_info(label)[2]
    if kind == "redshift":
        return ("sigma_nmad", "outlier_fraction", "bias", "coverage", "n")
    suffix = "_dex" if kind == "log" else ""
    return (f"scatter_nmad{suffix}", f"bias{suffix}", "coverage", "n")


def label_metrics(
    label: str, true: np.ndarray, pred: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None
) -> dict:
    """The field's measures for ``label``: photo-z measures for redshift, scatter and bias (in dex for a log
    quantity, else in the label's unit) for the others."""
    kind = label_info(label)[2]
    if kind == "redshift":
        return redshift_metrics(true, pred, lo, hi)
    return scatter_metrics(true, pred, lo, hi, "_dex" if kind == "log" else "")


PIT_BINS = 10  # the probability integral transform histogram's bins over [0, 1]


def pit_histogram(pit: np.ndarray, counts: np.ndarray | None = None) -> dict:
    """The PIT histogram of (n,) values in [0, 1] (NaN left out), added to earlier ``counts`` (PIT_BINS,) if given:
    {"bin_edges", "counts", "max_over_uniform"}, the last the largest bin's share over the uniform share (1 when
    flat, as for calibrated predictions; a U shape means too narrow intervals)."""
    pit = np.asarray(pit, np.float64)
    new = np.histogram(pit[np.isfinite(pit)], bins=PIT_BINS, range=(0.0, 1.0))[0]
    total = new if counts is None else np.asarray(counts) + new
    return {
        "bin_edges": np.linspace(0.0, 1.0, PIT_BINS + 1).tolist(),
        "counts": total.tolist(),
        "max_over_uniform": float(total.max() * PIT_BINS / total.sum()) if total.sum() else None,
    }


def is_outlier(z_true: np.ndarray, z_pred: np.ndarray) -> np.ndarray:
    """(n,) bool: |z_pred - z_true| / (1 + z_true) > 0.15."""
    t = np.asarray(z_true, np.float64)
    return np.abs(np.asarray(z_pred, np.float64) - t) / (1.0 + t) > OUTLIER_DZ
