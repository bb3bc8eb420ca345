"""One self-contained HTML report: metric tables and every figure inlined as base64 PNG."""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from pathlib import Path

from galclip.atomic import atomic_write_text
from galclip.html_page import cell, figure, page, table
from galclip.photoz import measure_keys
from galclip.vocabulary import PROPERTIES, label_info

logger = logging.getLogger(__name__)

ZERO_SHOT_SOURCES = ("image", "spectrum", "cross", "cross_sp2im", "raw_image", "raw_spectrum", "photometry")
# published zero-shot k-NN R² (REFERENCE.md): source -> label -> R²
PUBLISHED_R2 = {
    "AstroCLIP v1 (NeurIPS 2023 workshop), image, k = 16": {"redshift": 0.71, "log_mstar": 0.66},
    "AstroCLIP v1, spectrum": {"redshift": 0.97, "log_mstar": 0.86},
    "AstroCLIP v1, cross (image → spectrum)": {"redshift": 0.64, "log_mstar": 0.58},
    "Stein ResNet-50 + Spender reproduction, image": {"redshift": 0.65, "log_mstar": 0.57},
    "Stein ResNet-50 + Spender reproduction, spectrum": {"redshift": 0.87, "log_mstar": 0.74},
    "Stein ResNet-50 + Spender reproduction, cross": {"redshift": 0.59, "log_mstar": 0.50},
    "AstroCLIP MNRAS 2024 (Parker et al.), image, k = 64": {
        "redshift": 0.78,
        "log_mstar": 0.73,
        "age": 0.29,
        "log_metallicity": 0.36,
        "log_ssfr": 0.42,
    },
    "AstroCLIP MNRAS 2024, spectrum": {"log_mstar": 0.87, "log_metallicity": 0.57},
}


def targets_of(table: Mapping) -> list[str]:
    """The labels of a source -> label table, the PROVABGS properties first in their order, then the others."""
    found = dict.fromkeys(t for row in table.values() if isinstance(row, Mapping) for t in row)
    return [t for t in PROPERTIES if t in found] + [t for t in found if t not in PROPERTIES]


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
    targets = targets_of(zs)
    parts.append(
        table(
            "Zero-shot k-NN R², the seed's protocol (fit on half of the labelled test pairs, scored on the other half)",
            [s for s in ZERO_SHOT_SOURCES if s in zs] or list(zs),
            targets,
            zs,
        )
    )
    parts.append(
        table(
            "Published zero-shot R², for comparison (other data: the real DESI × Legacy Survey pairs and pretrained "
            "encoders; '–' where a paper reports none)",
            list(PUBLISHED_R2),
            [t for t in PROPERTIES if any(t in row for row in PUBLISHED_R2.values())],
            PUBLISHED_R2,
            spec=".2f",
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
                targets_of(product["r2"]),
                product["r2"],
            )
        )
        if product.get("coverage_68"):
            cov = {
                f"{m} {what}": row
                for m in product["coverage_68"]
                for what, row in (
                    ("coverage of [lo, hi]", product["coverage_68"][m]),
                    ("PIT largest bin / uniform", (product.get("pit_max_over_uniform") or {}).get(m) or {}),
                )
            }
            parts.append(
                table(
                    f"The product's intervals on the test pairs: coverage (calibrated: 0.68) and PIT flatness (1 = "
                    f"uniform), calibrated on {product.get('calibration_n', 0)} selection-split and leave-one-out "
                    "reference pairs",
                    list(cov),
                    targets_of(product["coverage_68"]),
                    cov,
                    spec=".3f",
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
    for target in targets_of(photoz):
        cells = {s: row.get(target) or {} for s, row in photoz.items()}
        if cells:
            title = (
                "Zero-shot redshift, the photo-z measures (Δz/(1+z); coverage of the 16th-84th percentile "
                "interval, calibrated: 0.68)"
                if target == "redshift"
                else f"Zero-shot {label_info(target)[0]}: scatter and bias (coverage calibrated: 0.68)"
            )
            parts.append(
                table(
                    title,
                    [s for s in ZERO_SHOT_SOURCES if s in cells] or list(cells),
                    list(measure_keys(target)),
                    cells,
                )
            )
    other_k = sorted(k for k in metrics if k.startswith("zero_shot_r2_k"))
    for key in other_k:
        other_table = metrics.get(key) or {}
        parts.append(
            table(
                f"Zero-shot k-NN R², k = {key.rsplit('_k', 1)[1]}",
                [s for s in ZERO_SHOT_SOURCES if s in other_table] or list(other_table),
                targets_of(other_table),
                other_table,
            )
        )
    sup = metrics.get("supervised_r2") or {}
    if sup:
        parts.append(
            table(
                "Supervised reference: MLP on the raw features, same split (R²)",
                list(sup),
                targets_of(sup),
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
