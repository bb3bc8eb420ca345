"""One self-contained HTML report: metric tables and every figure inlined as base64 PNG."""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path

from galclip.atomic import atomic_write_text
from galclip.html_page import cell, figure, page, table
from galclip.vocabulary import LABELS

logger = logging.getLogger(__name__)

ZERO_SHOT_SOURCES = ("image", "spectrum", "cross", "cross_sp2im", "raw_image", "raw_spectrum", "photometry")
PHOTOZ_COLUMNS = {
    "redshift": ("sigma_nmad", "outlier_fraction", "bias", "coverage", "n"),
    "log_mstar": ("scatter_nmad_dex", "bias_dex", "coverage", "n"),
}
ZERO_SHOT_TARGETS = LABELS
CROSS_DIRECTIONS = ("im2sp", "sp2im")
CROSS_COLUMNS = ("recall@1", "recall@5", "recall@10", "median_rank", "chance_recall@10")
INMODAL_DIRECTIONS = ("im2im", "sp2sp")
INMODAL_COLUMNS = ("median_abs_delta_knn", "median_abs_delta_random", "ratio")


def _flat(metrics: Mapping, prefix: str = "") -> dict[str, object]:
    """Scalar leaves of a nested dict as "a.b.c" -> value."""
    out: dict[str, object] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def write_report(metrics: Mapping, figures: Mapping[str, Path], path: Path | str) -> Path:
    """Write a single self-contained HTML report (inline CSS, base64 PNGs, no links).

    Tables: zero-shot R^2 (metrics["zero_shot_r2"][source][target]), cross-modal retrieval
    (metrics["retrieval"]["im2sp"|"sp2im"]), in-modal label deltas (metrics["retrieval"]
    ["im2im"|"sp2sp"][label]), timings (metrics["timings_s"]), then every other scalar.
    """
    zs = metrics.get("zero_shot_r2", {}) or {}
    ret = metrics.get("retrieval", {}) or {}
    parts = []
    splits = metrics.get("splits") or {}
    if splits:
        parts.append(
            f"<p><b>Every number below comes from the {html.escape(str(splits.get('every_number_from')))} "
            "split</b>, which never fitted nor chose the heads.</p>\n"
        )
        rows = {name: v for name, v in splits.items() if isinstance(v, Mapping)}
        parts.append(table("Splits (pure functions of the targetid)", list(rows), ["rule", "n", "used_for"], rows))
    summary = {k: metrics[k] for k in ("n_pairs", "n_eval", "n_labelled") if k in metrics}
    if summary:
        parts.append(table("Data", ["count"], list(summary), {"count": summary}))
    parts.append(
        table(
            "Zero-shot k-NN R², the seed's protocol (fit on half of the labelled test pairs, scored on the other half)",
            [s for s in ZERO_SHOT_SOURCES if s in zs] or list(zs),
            list(ZERO_SHOT_TARGETS),
            zs,
        )
    )
    product = metrics.get("zero_shot_product") or {}
    if product:
        parts.append(
            table(
                f"Zero-shot R², the product's protocol (k = {product['k']} over the "
                f"{product['reference_n']} labelled train-split pairs in the query's modality, scored on "
                "every labelled test pair: what 'galclip predict' and the page give)",
                list(product["r2"]),
                list(ZERO_SHOT_TARGETS),
                product["r2"],
            )
        )
    shortfall = metrics.get("zero_shot_shortfall")
    if shortfall:
        parts.append(f"<p class='note'><b>Why “–”:</b> {html.escape(shortfall['note'])}.</p>\n")
    best = metrics.get("zero_shot_best") or {}
    if best:
        lines = []
        for target, entry in best.items():
            ranking = ", ".join(f"{html.escape(s)} {cell(v)}" for s, v in entry["ranking"])
            lines.append(
                f"<li><b>{html.escape(target)}</b>: best zero-shot source by R² is "
                f"<b>{html.escape(entry['best'])}</b> (ranking: {ranking})</li>"
            )
        parts.append("<h2>Which source wins</h2><ul>" + "".join(lines) + "</ul>\n")
    photoz = metrics.get("zero_shot_photoz") or {}
    for target, columns in PHOTOZ_COLUMNS.items():
        cells = {s: row.get(target) or {} for s, row in photoz.items()}
        if cells:
            title = (
                "Zero-shot redshift, the photo-z measures (Δz/(1+z); coverage of the 16th-84th percentile "
                "interval, calibrated: 0.68)"
                if target == "redshift"
                else "Zero-shot log M*, scatter and bias in dex (coverage calibrated: 0.68)"
            )
            parts.append(
                table(title, [s for s in ZERO_SHOT_SOURCES if s in cells] or list(cells), list(columns), cells)
            )
    other_k = sorted(k for k in metrics if k.startswith("zero_shot_r2_k"))
    for key in other_k:
        other_table = metrics.get(key) or {}
        parts.append(
            table(
                f"Zero-shot k-NN R², k = {key.rsplit('_k', 1)[1]}",
                [s for s in ZERO_SHOT_SOURCES if s in other_table] or list(other_table),
                list(ZERO_SHOT_TARGETS),
                other_table,
            )
        )
    sup = metrics.get("supervised_r2") or {}
    if sup:
        parts.append(
            table(
                "Supervised reference: MLP on the raw features, same split (R²)",
                list(sup),
                list(ZERO_SHOT_TARGETS),
                sup,
            )
        )
    parts.append(
        table(
            "Cross-modal retrieval (rank of the true partner)",
            [d for d in CROSS_DIRECTIONS if d in ret],
            list(CROSS_COLUMNS),
            ret,
        )
    )
    inmodal = {
        f"{d} {label}": v
        for d in INMODAL_DIRECTIONS
        for label, v in (ret.get(d) or {}).items()
        if isinstance(v, Mapping)
    }
    if inmodal:
        parts.append(
            table(
                "In-modal neighbours: median |Δlabel| (top-k vs random pairs)",
                list(inmodal),
                list(INMODAL_COLUMNS),
                inmodal,
            )
        )
    timings = metrics.get("timings_s", {}) or {}
    if timings:
        parts.append(table("Timings (s)", list(timings), ["seconds"], {k: {"seconds": v} for k, v in timings.items()}))
    shown = {
        "zero_shot_r2",
        "retrieval",
        "timings_s",
        "figures",
        "supervised_r2",
        "zero_shot_photoz",
        "zero_shot_best",
        "splits",
        "zero_shot_shortfall",
        "zero_shot_product",
        *other_k,
        *summary,
    }
    other = _flat({k: v for k, v in metrics.items() if k not in shown})
    if other:
        parts.append(table("Other", list(other), ["value"], {k: {"value": v} for k, v in other.items()}))
    parts.append("<h2>Figures</h2>\n")
    parts.extend(figure(name, png) for name, png in figures.items())
    out = atomic_write_text(page("galclip evaluation", "".join(parts)), path)
    logger.info("wrote report %s (%d figures)", out, len(figures))
    return out
