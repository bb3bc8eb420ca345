"""A catalogue against the truth: labels joined by targetid, and the photo-z measures gathered block by block."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galclip.errors import InputError
from galclip.neighbours import idw_weights, weighted_quantile
from galclip.photoz import is_outlier, label_metrics
from galclip.targetids import lookup
from galclip.vocabulary import LABELS

COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7, 0.8, 0.9, 0.95)  # nominal central-interval probabilities


def load_truth(path: str | Path, targetid: np.ndarray) -> dict[str, np.ndarray]:
    """True redshift and log M* of the galaxies ``targetid`` (n,): {"redshift", "log_mstar"} -> (n,) float64, NaN
    where the truth has no row. ``path``: a PROVABGS-layout catalogue (its cuts applied) or a feature store's labels."""
    path = Path(path)
    if (path / "zarr.json").exists():
        from galclip.store import FeatureStore

        store = FeatureStore.open(path)
        labels, ids = store.labels(), store.targetids()
        order = np.argsort(ids)
        pos = lookup(ids[order], targetid, order)
        hit = pos >= 0
        out = {}
        for label in LABELS:
            y = np.full(len(targetid), np.nan)
            y[hit] = labels[label][pos[hit]]
            out[label] = y
    else:
        from galclip.data.catalogue import join_columns

        joined, _ = join_columns(targetid, path, ("Z_HP", "PROVABGS_LOGMSTAR_BF"))  # float64, the cuts applied
        out = {"redshift": joined["Z_HP"], "log_mstar": joined["PROVABGS_LOGMSTAR_BF"]}
    if not any(np.isfinite(y).any() for y in out.values()):
        raise InputError(
            f"{path}: holds no labels for any of the {len(targetid)} galaxies predicted (e.g. targetid "
            f"{int(targetid[0]) if len(targetid) else '-'}); pass the truth catalogue of these galaxies"
        )
    return out


class TruthAccumulator:
    """Collects, block by block, each labelled galaxy's truth and estimate, and the coverage of the neighbours'
    central intervals at ``COVERAGE_LEVELS``. Memory: 4 float64 per labelled galaxy and label."""

    def __init__(self, truth: dict[str, np.ndarray]):
        self.truth = truth
        self.parts: dict[str, list[np.ndarray]] = {label: [] for label in LABELS}
        self.hits = {label: np.zeros(len(COVERAGE_LEVELS), np.int64) for label in LABELS}

    def add(
        self,
        rows: np.ndarray,
        nn_dist: np.ndarray,
        nn_y: dict[str, np.ndarray],
        estimates: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> None:
        """rows (m,) store rows of a block; nn_dist (m, k); nn_y label -> (m, k) neighbour labels;
        estimates label -> (pred, lo, hi), each (m,)."""
        weights = idw_weights(nn_dist)
        for label in LABELS:
            true = self.truth[label][rows]
            has = np.isfinite(true)
            if not has.any():
                continue
            pred, lo, hi = (np.asarray(a)[has] for a in estimates[label])
            self.parts[label].append(np.stack([true[has], pred, lo, hi], axis=1))
            for j, level in enumerate(COVERAGE_LEVELS):
                a = weighted_quantile(nn_y[label][has], weights[has], 0.5 - level / 2)
                b = weighted_quantile(nn_y[label][has], weights[has], 0.5 + level / 2)
                self.hits[label][j] += int(np.sum((a <= true[has]) & (true[has] <= b)))

    def arrays(self, label: str) -> dict[str, np.ndarray]:
        """{"true", "pred", "lo", "hi"} -> (n,) float64 for the galaxies with a true ``label``."""
        block = np.concatenate(self.parts[label]) if self.parts[label] else np.zeros((0, 4))
        return dict(zip(("true", "pred", "lo", "hi"), block.T))

    def metrics(self) -> dict:
        """The photo-z measures per label, the coverage curve, and for redshift the outlier count."""
        out: dict = {}
        for label in LABELS:
            a = self.arrays(label)
            out[label] = label_metrics(label, a["true"], a["pred"], a["lo"], a["hi"])
            n = len(a["true"])
            out[label]["coverage_curve"] = {
                "nominal": list(COVERAGE_LEVELS),
                "empirical": (self.hits[label] / n).tolist() if n else None,
            }
            if label == "redshift":
                out[label]["n_outliers"] = int(is_outlier(a["true"], a["pred"]).sum())
        out["n_with_truth"] = int(max(len(self.arrays(label)["true"]) for label in LABELS))
        return out
