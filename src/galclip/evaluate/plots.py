"""Evaluation figures, one PNG per function, drawn on matplotlib's Agg canvas.

Figures are built as ``matplotlib.figure.Figure`` objects attached to a
``FigureCanvasAgg`` explicitly, so pyplot and the process-wide backend are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    pass

from galclip.figures import new_figure as _new_figure
from galclip.figures import save_png

logger = logging.getLogger(__name__)

KINDS = ("image", "spectrum")
_HEXBIN_MIN_POINTS = 200


def plot_pred_vs_true(table: Mapping[str, Mapping[str, Mapping]], path: Path | str) -> Path:
    """Grid of predicted vs true panels, rows = sources, columns = targets, from
    :func:`galclip.neighbours.zero_shot_table`; hexbin (scatter below 200 points), 1:1
    line, R^2 in each title."""
    sources = list(table)
    targets = list(dict.fromkeys(t for row in table.values() for t in row))  # first-seen order
    n_rows, n_cols = max(1, len(sources)), max(1, len(targets))
    fig = _new_figure(3.4 * n_cols, 3.0 * n_rows, layout=None)
    fig.subplots_adjust(
        left=0.1, right=0.97, bottom=0.6 / (3.0 * n_rows), top=1 - 0.4 / (3.0 * n_rows), wspace=0.35, hspace=0.55
    )
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, source in enumerate(sources):
        for j, target in enumerate(targets):
            ax = axes[i, j]
            cell = table[source].get(target)
            true = np.asarray(cell["true"], dtype=float) if cell else np.empty(0)
            pred = np.asarray(cell["pred"], dtype=float) if cell else np.empty(0)
            r2 = float(cell["r2"]) if cell and cell["r2"] is not None else float("nan")
            if true.size == 0:
                ax.text(0.5, 0.5, "too few labels", ha="center", va="center", transform=ax.transAxes)
            else:
                if true.size >= _HEXBIN_MIN_POINTS:
                    ax.hexbin(true, pred, gridsize=40, mincnt=1, bins="log", cmap="viridis")
                else:
                    ax.scatter(true, pred, s=8, alpha=0.7)
                lo = float(np.nanmin([true.min(), pred.min()]))
                hi = float(np.nanmax([true.max(), pred.max()]))
                ax.plot([lo, hi], [lo, hi], color="red", lw=1)
            ax.set_title(f"{source} → {target}   R²={r2:.3f}", fontsize=9)
            ax.set_xlabel(f"true {target}", fontsize=8)
            ax.set_ylabel(f"predicted {target}", fontsize=8)
    return save_png(fig, path)


def plot_umap(coords: np.ndarray, colour_by: Mapping[str, np.ndarray], path: Path | str, title: str = "") -> Path:
    """UMAP scatter of ``coords`` (n, 2), one panel per ``colour_by`` entry (n,); NaN in grey."""
    xy = np.asarray(coords, dtype=float)
    names = list(colour_by) or [""]
    fig = _new_figure(4.2 * len(names), 3.8)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    size = max(1.0, min(12.0, 3000.0 / max(len(xy), 1)))
    for ax, name in zip(axes, names):
        values = np.asarray(colour_by[name], dtype=float) if name in colour_by else np.full(len(xy), np.nan)
        ok = np.isfinite(values)
        ax.scatter(xy[~ok, 0], xy[~ok, 1], s=size, c="lightgrey", lw=0)
        if ok.any():
            sc = ax.scatter(xy[ok, 0], xy[ok, 1], s=size, c=values[ok], cmap="viridis", lw=0)
            fig.colorbar(sc, ax=ax, label=name)
        ax.set_title(f"{title} coloured by {name}" if title else name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return save_png(fig, path)


def _draw(ax, kind: str, index: int, image_rgb: Callable, spectrum: Callable) -> None:
    """Draw galaxy ``index`` as an RGB image or a spectrum curve on ``ax``."""
    if kind == "image":
        ax.imshow(np.clip(np.asarray(image_rgb(np.array([index]))[0], dtype=float), 0, 1))
        ax.set_axis_off()
    else:
        from matplotlib.ticker import MaxNLocator

        wave, flux = spectrum(np.array([index]))
        ax.plot(np.asarray(wave), np.asarray(flux)[0], lw=0.5, color="black")
        ax.set_yticks([])
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.tick_params(labelsize=6)


def plot_gallery(
    query_index: np.ndarray,
    neighbour_indices: np.ndarray,
    similarities: np.ndarray,
    query_kind: str,
    target_kind: str,
    image_rgb: Callable[[np.ndarray], np.ndarray],
    spectrum: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    path: Path | str,
    title: str = "",
    names: np.ndarray | None = None,
) -> Path:
    """Retrieval gallery: one row per query, the query then its top-k results, each panel titled by its targetid
    (``names``: (n,) targetids by galaxy index; without them, by index).

    query_index: (q,) galaxy indices; neighbour_indices, similarities: (q, k). query_kind and
    target_kind are "image" (drawn RGB via image_rgb(indices) -> (m, H, W, 3)) or "spectrum"
    (curve via spectrum(indices) -> (wave (L,), flux (m, L))). A result that is the query's
    own partner galaxy is marked with a star.
    """
    for kind in (query_kind, target_kind):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    queries = np.atleast_1d(np.asarray(query_index, dtype=np.int64))
    nbrs = np.asarray(neighbour_indices, dtype=np.int64).reshape(len(queries), -1)
    sims = np.asarray(similarities, dtype=float).reshape(nbrs.shape)
    n_cols = 1 + nbrs.shape[1]
    wide = 2.4 if "spectrum" in (query_kind, target_kind) else 1.8
    height = 1.9 * max(1, len(queries)) + 0.5
    fig = _new_figure(wide * n_cols, height, layout=None)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.3 / height, top=1 - 0.5 / height, wspace=0.1, hspace=0.35)
    axes = fig.subplots(max(1, len(queries)), n_cols, squeeze=False)
    label = (lambda i: f"#{i}") if names is None else (lambda i: str(int(names[i])))
    for r, q in enumerate(queries):
        _draw(axes[r, 0], query_kind, int(q), image_rgb, spectrum)
        axes[r, 0].set_title(f"query {label(int(q))} ({query_kind})", fontsize=7, color="blue")
        for c in range(nbrs.shape[1]):
            idx = int(nbrs[r, c])
            _draw(axes[r, c + 1], target_kind, idx, image_rgb, spectrum)
            mark = " ★" if idx == q else ""
            axes[r, c + 1].set_title(f"{label(idx)} s={sims[r, c]:.3f}{mark}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)
