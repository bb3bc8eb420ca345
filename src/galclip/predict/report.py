"""The page of a catalogue scored against the truth: the photo-z measures, predicted vs true, and coverage."""

from __future__ import annotations

import html
from pathlib import Path

from galclip.atomic import atomic_write_text
from galclip.figures import plot_coverage, plot_photoz
from galclip.html_page import figure, page, table
from galclip.photoz import is_outlier
from galclip.predict.truth import TruthAccumulator
from galclip.vocabulary import LABELS

ROWS = {
    "redshift": (
        ("sigma_nmad", "σ_NMAD of Δz/(1+z)"),
        ("outlier_fraction", "η: share with |Δz|/(1+z) > 0.15"),
        ("bias", "bias: median Δz/(1+z)"),
        ("mean_bias", "mean Δz/(1+z)"),
        ("coverage", "coverage of [z_lo, z_hi] (calibrated: 0.68)"),
        ("n", "galaxies with a true z"),
    ),
    "log_mstar": (
        ("scatter_nmad_dex", "scatter (NMAD), dex"),
        ("scatter_std_dex", "scatter (std), dex"),
        ("bias_dex", "bias: median Δ, dex"),
        ("coverage", "coverage of [lo, hi] (calibrated: 0.68)"),
        ("n", "galaxies with a true log M*"),
    ),
}


def write_truth_report(metrics: dict, truth: TruthAccumulator, out_dir: Path) -> dict[str, str]:
    """Write pred_vs_true.png, coverage.png and report.html into ``out_dir``; returns {figure: file name}."""
    panels = {}
    for label in LABELS:
        a = truth.arrays(label)
        if label == "redshift":
            a["outlier"] = is_outlier(a["true"], a["pred"])
        panels[label] = a
    figures = {
        "pred_vs_true": plot_photoz(
            panels, out_dir / "pred_vs_true.png", title=f"zero-shot from {metrics['modality']}s, k = {metrics['k']}"
        ),
        "coverage": plot_coverage(
            {label: metrics["truth"][label]["coverage_curve"] for label in LABELS}, out_dir / "coverage.png"
        ),
    }
    tables = "".join(
        table(
            "Redshift" if label == "redshift" else "Stellar mass",
            [name for _, name in ROWS[label]],
            ["value"],
            {name: {"value": metrics["truth"][label].get(key)} for key, name in ROWS[label]},
            spec=".4f",
        )
        for label in LABELS
    )
    images = "".join(figure(name, path) for name, path in figures.items())
    ref = metrics["reference"]
    intro = (
        f"<p>{metrics['n_galaxies']} galaxies from their {html.escape(metrics['modality'])}s "
        f"({metrics['n_predicted']} predicted, {metrics['n_ood']} flagged out of distribution), each from its "
        f"k = {metrics['k']} nearest of {ref['n']} labelled reference galaxies ({html.escape(ref['selection'])} "
        "split of the index), weighted by inverse distance; intervals are the neighbours' weighted "
        f"16th&ndash;84th percentiles. Truth: {html.escape(str(metrics['truth']['source']))}. Catalogue: "
        f"{html.escape(metrics['catalogue'])}.</p>\n"
    )
    text = page("Zero-shot catalogue against the truth", intro + tables + images)
    atomic_write_text(text, out_dir / "report.html")
    return {**{name: path.name for name, path in figures.items()}, "report": "report.html"}
