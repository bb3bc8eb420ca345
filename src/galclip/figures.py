"""Figures shared by training and evaluation, drawn on matplotlib's Agg canvas and written atomically.

Figures are ``matplotlib.figure.Figure`` objects attached to a ``FigureCanvasAgg`` explicitly, so
pyplot and the process-wide backend are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from galclip.vocabulary import label_info

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """An Agg-backed figure (no pyplot state). Big grids pass layout=None: constrained
    layout costs seconds on dozens of axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path | str, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG atomically (a crash leaves the previous figure or none)."""
    from galclip.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    logger.debug("wrote %s", path)
    return path


def plot_loss_curves(history: Mapping[str, list], path: Path | str) -> Path:
    """Train and validation InfoNCE loss per epoch, learning rate (log) on a twin axis if given."""
    fig = new_figure(6.5, 4.0)
    ax = fig.add_subplot()
    train, selection = list(history.get("train_loss", [])), list(history.get("val_loss", []))
    if train:
        ax.plot(np.arange(1, len(train) + 1), train, label="train loss")
    if selection:
        ax.plot(np.arange(1, len(selection) + 1), selection, label="selection-split loss")
    if not train and not selection:
        ax.text(0.5, 0.5, "no loss history", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("InfoNCE loss")
    lr = list(history.get("lr", []) or [])
    if lr:
        ax2 = ax.twinx()
        ax2.plot(np.arange(1, len(lr) + 1), lr, color="grey", ls="--", lw=1, label="learning rate")
        ax2.set_yscale("log")
        ax2.set_ylabel("learning rate")
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper right")
    elif train or selection:
        ax.legend(loc="upper right")
    ax.set_title("Projection-head training")
    return save_png(fig, path)


def plot_val_loss_curves(curves: Sequence[tuple[str, list[float]]], path: Path | str) -> Path:
    """Validation InfoNCE per epoch, one line per (label, losses): the sweep's overview."""
    fig = new_figure(7, 4.5, layout=None)
    ax = fig.add_subplot()
    for label, losses in curves:
        ax.plot(losses, lw=1, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation InfoNCE")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return save_png(fig, path, dpi=110)


def plot_photoz(panels: Mapping[str, Mapping[str, np.ndarray]], path: Path | str, title: str = "") -> Path:
    """Predicted against true, one panel per label: panels[label] = {"true", "pred", "lo", "hi"} (n,) each, and
    optionally "outlier" (n,) bool, drawn in red. Error bars are the [lo, hi] intervals (up to 2000 drawn)."""
    names = {label: label_info(label)[0] for label in panels}
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = new_figure(5.2 * ncol, 4.8 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (label, a) in zip(axes, panels.items()):
        true, pred = np.asarray(a["true"]), np.asarray(a["pred"])
        if true.size:
            outlier = np.asarray(a.get("outlier", np.zeros(true.size, bool)))
            show = np.random.default_rng(0).permutation(true.size)[:2000]
            yerr = np.abs(np.vstack([pred[show] - a["lo"][show], a["hi"][show] - pred[show]]))
            ax.errorbar(true[show], pred[show], yerr=yerr, fmt="none", ecolor="0.8", elinewidth=0.6, zorder=1)
            ax.scatter(true[~outlier], pred[~outlier], s=6, alpha=0.6, color="C0", zorder=2, label="galaxies")
            if outlier.any():
                ax.scatter(
                    true[outlier],
                    pred[outlier],
                    s=14,
                    color="C3",
                    zorder=3,
                    label=f"outliers ({int(outlier.sum())}: |Δz|/(1+z) > 0.15)",
                )
            lo, hi = float(np.nanmin([true.min(), pred.min()])), float(np.nanmax([true.max(), pred.max()]))
            ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, zorder=4)
            if label == "redshift":
                grid = np.linspace(lo, hi, 50)
                for sign in (1, -1):
                    ax.plot(grid, grid + sign * 0.15 * (1 + grid), color="C3", lw=0.6, ls="--", zorder=4)
            ax.legend(loc="upper left", fontsize=8)
        ax.set_xlabel(f"true {names.get(label, label)}")
        ax.set_ylabel(f"predicted {names.get(label, label)}")
    if title:
        fig.suptitle(title)
    return save_png(fig, path)


def plot_coverage(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path | str) -> Path:
    """Calibration of the intervals: the share of truths inside the neighbours' central interval against its
    nominal probability, one line per label (curves[label] = {"nominal": [...], "empirical": [...]})."""
    fig = new_figure(5.0, 4.6)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="k", lw=0.8, label="calibrated")
    for label, curve in curves.items():
        if curve.get("empirical") is not None:
            ax.plot(curve["nominal"], curve["empirical"], marker="o", label=label)
    ax.axvline(0.68, color="0.7", lw=0.6, ls=":")
    ax.set_xlabel("nominal probability of the central interval")
    ax.set_ylabel("share of true values inside")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    return save_png(fig, path)


def plot_pit(histograms: Mapping[str, Mapping[str, Sequence[float]]], path: Path | str) -> Path:
    """Probability integral transform histograms, one step line per label (histograms[label] = {"bin_edges",
    "counts"}), as densities: a calibrated predictor's PIT is flat at 1, a too-narrow one is U-shaped, a biased one
    tilted."""
    fig = new_figure(5.4, 4.4)
    ax = fig.subplots()
    ax.axhline(1.0, color="k", lw=0.8, label="calibrated (uniform)")
    top = 1.0
    for label, h in histograms.items():
        counts, edges = np.asarray(h["counts"], float), np.asarray(h["bin_edges"], float)
        if counts.sum():
            density = counts / counts.sum() / np.diff(edges)
            ax.stairs(density, edges, label=label, lw=1.4)
            top = max(top, float(density.max()))
    ax.set_ylim(0, top * 1.35)  # room for the legend above the bars
    ax.set_xlabel("PIT: predictive CDF at the true value")
    ax.set_ylabel("density")
    ax.set_xlim(0, 1)
    ax.legend(loc="upper center", fontsize=7, ncol=2)
    return save_png(fig, path)
