"""The page of a catalogue scored against the truth: the photo-z measures, predicted vs true, and coverage."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from galclip.atomic import atomic_write_text
from galclip.figures import plot_coverage, plot_photoz
from galclip.photoz import is_outlier
from galclip.predict.truth import LABELS, TruthAccumulator

ROWS = {"redshift": (("sigma_nmad", "σ_NMAD of Δz/(1+z)"), ("outlier_fraction", "η: share with |Δz|/(1+z) > 0.15"),
                     ("bias", "bias: median Δz/(1+z)"), ("mean_bias", "mean Δz/(1+z)"),
                     ("coverage", "coverage of [z_lo, z_hi] (calibrated: 0.68)"), ("n", "galaxies with a true z")),
        "log_mstar": (("scatter_nmad_dex", "scatter (NMAD), dex"), ("scatter_std_dex", "scatter (std), dex"),
                      ("bias_dex", "bias: median Δ, dex"), ("coverage", "coverage of [lo, hi] (calibrated: 0.68)"),
                      ("n", "galaxies with a true log M*"))}


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def write_truth_report(metrics: dict, truth: TruthAccumulator, out_dir: Path) -> dict[str, str]:
    """Write pred_vs_true.png, coverage.png and report.html into ``out_dir``; returns {figure: file name}."""
    panels = {}
    for label in LABELS:
        a = truth.arrays(label)
        if label == "redshift":
            a["outlier"] = is_outlier(a["true"], a["pred"])
        panels[label] = a
    figures = {"pred_vs_true": plot_photoz(panels, out_dir / "pred_vs_true.png",
                                           title=f"zero-shot from {metrics['modality']}s, k = {metrics['k']}"),
               "coverage": plot_coverage({label: metrics["truth"][label]["coverage_curve"] for label in LABELS},
                                         out_dir / "coverage.png")}
    tables = []
    for label in LABELS:
        cells = "".join(f"<tr><td>{html.escape(name)}</td><td>{_fmt(metrics['truth'][label].get(key))}</td></tr>"
                        for key, name in ROWS[label])
        tables.append(f"<h2>{'Redshift' if label == 'redshift' else 'Stellar mass'}</h2><table>{cells}</table>")
    images = "".join(
        f"<figure><img alt='{name}' src='data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}'>"
        f"<figcaption>{name}</figcaption></figure>" for name, path in figures.items())
    ref = metrics["reference"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>galclip predict: {html.escape(metrics['catalogue'])}</title>
<style>body{{font-family:sans-serif;margin:2em auto;max-width:1100px;color:#222}}table{{border-collapse:collapse}}
td{{border:1px solid #bbb;padding:.25em .7em}}td:last-child{{text-align:right}}img{{max-width:100%}}</style></head><body>
<h1>Zero-shot catalogue against the truth</h1>
<p>{metrics['n_galaxies']} galaxies from their {html.escape(metrics['modality'])}s ({metrics['n_predicted']} predicted,
{metrics['n_ood']} flagged out of distribution), each from its k = {metrics['k']} nearest of {ref['n']} labelled reference
galaxies ({html.escape(ref['selection'])} split of the index), weighted by inverse distance; intervals are the
neighbours' weighted 16th&ndash;84th percentiles. Truth: {html.escape(str(metrics['truth']['source']))}.</p>
{''.join(tables)}{images}</body></html>"""
    atomic_write_text(page, out_dir / "report.html")
    return {**{name: path.name for name, path in figures.items()}, "report": "report.html"}
