"""The page of a catalogue scored against the truth: the photo-z measures, predicted vs true, and coverage."""

from __future__ import annotations

import html
from pathlib import Path

from galclip.atomic import atomic_write_text
from galclip.figures import plot_coverage, plot_photoz, plot_pit
from galclip.html_page import figure, page, table
from galclip.photoz import is_outlier, measure_keys
from galclip.predict.truth import TruthAccumulator

KEY_NAMES = {
    "sigma_nmad": "σ_NMAD of Δz/(1+z)",
    "outlier_fraction": "η: share with |Δz|/(1+z) > 0.15",
    "bias": "bias: median Δ",
    "coverage": "coverage of [lo, hi] (calibrated: 0.68)",
    "n": "galaxies with a truth",
    "scatter_nmad_dex": "scatter (NMAD), dex",
    "bias_dex": "bias: median Δ, dex",
    "scatter_nmad": "scatter (NMAD)",
    "max_over_uniform": "PIT: largest bin / uniform (1 = flat)",
}


def write_truth_report(metrics: dict, truth: TruthAccumulator, out_dir: Path) -> dict[str, str]:
    """Write pred_vs_true.png, coverage.png, pit.png and report.html into ``out_dir``; returns {figure: file name}."""
    labels = metrics["truth"]["labels_scored"]
    panels = {}
    for label in labels:
        a = truth.arrays(label)
        if label == "redshift":
            a["outlier"] = is_outlier(a["true"], a["pred"])
        panels[label] = a
    figures = {
        "pred_vs_true": plot_photoz(
            panels, out_dir / "pred_vs_true.png", title=f"zero-shot from {metrics['modality']}s, k = {metrics['k']}"
        ),
        "coverage": plot_coverage(
            {label: metrics["truth"][label]["coverage_curve"] for label in labels}, out_dir / "coverage.png"
        ),
        "pit": plot_pit({label: metrics["truth"][label]["pit_histogram"] for label in labels}, out_dir / "pit.png"),
    }
    values = {
        label: {
            **metrics["truth"][label],
            "max_over_uniform": metrics["truth"][label]["pit_histogram"]["max_over_uniform"],
        }
        for label in labels
    }
    keys = list(dict.fromkeys(key for label in labels for key in (*measure_keys(label), "max_over_uniform")))
    tables = table(
        "The catalogue against the truth, per label",
        labels,
        [KEY_NAMES.get(key, key) for key in keys],
        {label: {KEY_NAMES.get(key, key): values[label].get(key) for key in keys} for label in labels},
        spec=".4f",
    )
    images = "".join(figure(name, path) for name, path in figures.items())
    ref = metrics["reference"]
    intro = (
        f"<p>{metrics['n_galaxies']} galaxies from their {html.escape(metrics['modality'])}s "
        f"({metrics['n_predicted']} predicted, {metrics['n_ood']} flagged out of distribution), each from its "
        f"k = {metrics['k']} nearest of {ref['n']} labelled reference galaxies ({html.escape(ref['selection'])} "
        "split of the index), weighted by inverse distance; intervals are the neighbours' weighted "
        "16th&ndash;84th percentiles, stretched by the split-conformal factor fitted on the index's selection "
        "split and its reference galaxies left out one by one (never test). Truth: "
        f"{html.escape(str(metrics['truth']['source']))}. Catalogue: "
        f"{html.escape(metrics['catalogue'])}.</p>\n"
    )
    text = page("Zero-shot catalogue against the truth", intro + tables + images)
    atomic_write_text(text, out_dir / "report.html")
    return {**{name: path.name for name, path in figures.items()}, "report": "report.html"}
