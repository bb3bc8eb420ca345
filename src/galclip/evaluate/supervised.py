"""Supervised upper reference: an MLP regressor trained on the raw backbone features.

AstroCLIP's tables put a supervised model beside the zero-shot k-NN scores, so users can see
how much of the physics the frozen features hold at all. Same split as the k-NN.
"""

from __future__ import annotations

import logging

import numpy as np

from galclip.neighbours import r2_score

logger = logging.getLogger(__name__)


def supervised_table(
    sources: dict[str, tuple[np.ndarray, np.ndarray]],
    targets: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int = 0,
    min_train: int = 20,
) -> dict[str, dict[str, float]]:
    """R² of an MLPRegressor(256) per source and target: sources[name] = (train_x (n, d), test_x (m, d)),
    targets[name] = (train_y (n,), test_y (m,)); NaN labels are dropped; NaN R² with too few rows."""
    from sklearn.neural_network import MLPRegressor

    table: dict[str, dict[str, float]] = {}
    for s_name, (train_x, test_x) in sources.items():
        table[s_name] = {}
        for t_name, (train_y, test_y) in targets.items():
            fit, ask = np.isfinite(train_y), np.isfinite(test_y)
            if fit.sum() < min_train or ask.sum() < 2:
                table[s_name][t_name] = float("nan")
                continue
            mean, std = float(np.mean(train_y[fit])), float(np.std(train_y[fit]) or 1.0)
            model = MLPRegressor(
                hidden_layer_sizes=(256,), alpha=1e-3, early_stopping=True, max_iter=500, random_state=seed
            )
            model.fit(train_x[fit], (train_y[fit] - mean) / std)
            table[s_name][t_name] = r2_score(test_y[ask], model.predict(test_x[ask]) * std + mean)
    return table
