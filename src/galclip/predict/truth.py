"""A catalogue against the truth: labels joined by targetid, and the photo-z measures gathered block by block."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galclip.errors import InputError
from galclip.photoz import PIT_BINS, is_outlier, label_metrics, pit_histogram
from galclip.targetids import lookup
from galclip.vocabulary import LABELS

COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.68, 0.7, 0.8, 0.9, 0.95)  # nominal central-interval probabilities


def load_truth(
    path: str | Path,
    targetid: np.ndarray,
    labels: tuple[str, ...] = LABELS,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """True ``labels`` of the galaxies ``targetid`` (n,): label -> (n,) float64, NaN where the truth has no row or
    no such label. ``path``: a PROVABGS-layout catalogue (its cuts applied; its properties derived as extraction
    derives them; galaxies without a TARGETID joined on the sky by their ``positions``) or a feature store's
    labels."""
    path = Path(path)
    if (path / "zarr.json").exists():
        from galclip.store import FeatureStore

        store = FeatureStore.open(path)
        held, ids = store.labels(), store.targetids()
        order = np.argsort(ids)
        pos = lookup(ids[order], targetid, order)
        hit = pos >= 0
        found = {}
        for label, values in held.items():
            y = np.full(len(targetid), np.nan)
            y[hit] = values[pos[hit]]
            found[label] = y
    else:
        from galclip.data.catalogue import join_labels

        found = dict(join_labels(targetid, path, label_dtype=np.float64, positions=positions).values)
    out = {label: found.get(label, np.full(len(targetid), np.nan)) for label in labels}
    if not any(np.isfinite(y).any() for y in out.values()):
        raise InputError(
            f"{path}: holds no labels for any of the {len(targetid)} galaxies predicted (e.g. targetid "
            f"{int(targetid[0]) if len(targetid) else '-'}); pass the truth catalogue of these galaxies"
        )
    return out


class TruthAccumulator:
    """Collects, block by block, each labelled galaxy's truth and estimate, the coverage of the calibrated central
    intervals at ``COVERAGE_LEVELS`` and the PIT histogram. Memory: 4 float64 per labelled galaxy and label."""

    def __init__(self, truth: dict[str, np.ndarray]):
        self.truth = truth
        self.labels = tuple(truth)
        self.parts: dict[str, list[np.ndarray]] = {label: [] for label in self.labels}
        self.hits = {label: np.zeros(len(COVERAGE_LEVELS), np.int64) for label in self.labels}
        self.pit = {label: np.zeros(PIT_BINS, np.int64) for label in self.labels}  # counts per bin

    def add(self, rows: np.ndarray, predictions) -> None:
        """rows (m,) store rows of a block; ``predictions``: their :class:`galclip.index.zero_shot.Predictions`."""
        for label in self.labels:
            if label not in predictions.labels:
                continue
            true = self.truth[label][rows]
            has = np.isfinite(true)
            if not has.any():
                continue
            pred, lo, hi = (np.asarray(a)[has] for a in predictions.labels[label])
            self.parts[label].append(np.stack([true[has], pred, lo, hi], axis=1))
            for j, level in enumerate(COVERAGE_LEVELS):
                a = predictions.quantile(label, 0.5 - level / 2)[has]
                b = predictions.quantile(label, 0.5 + level / 2)[has]
                self.hits[label][j] += int(np.sum((a <= true[has]) & (true[has] <= b)))
            self.pit[label] = np.asarray(pit_histogram(predictions.pit(label, true)[has], self.pit[label])["counts"])

    def arrays(self, label: str) -> dict[str, np.ndarray]:
        """{"true", "pred", "lo", "hi"} -> (n,) float64 for the galaxies with a true ``label``."""
        block = np.concatenate(self.parts[label]) if self.parts[label] else np.zeros((0, 4))
        return dict(zip(("true", "pred", "lo", "hi"), block.T))

    def metrics(self) -> dict:
        """The photo-z measures per label with a truth, the coverage curve, the PIT histogram, and for redshift the
        outlier count."""
        out: dict = {}
        scored = [label for label in self.labels if len(self.arrays(label)["true"])]
        for label in scored:
            a = self.arrays(label)
            out[label] = label_metrics(label, a["true"], a["pred"], a["lo"], a["hi"])
            n = len(a["true"])
            out[label]["coverage_curve"] = {
                "nominal": list(COVERAGE_LEVELS),
                "empirical": (self.hits[label] / n).tolist(),
            }
            out[label]["pit_histogram"] = pit_histogram(np.zeros(0), self.pit[label])
            if label == "redshift":
                out[label]["n_outliers"] = int(is_outlier(a["true"], a["pred"]).sum())
        out["labels_scored"] = scored
        out["n_with_truth"] = int(max((len(self.arrays(label)["true"]) for label in self.labels), default=0))
        return out
