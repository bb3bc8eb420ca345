"""Evaluation orchestrator: retrieval, galleries, zero-shot k-NN, UMAP, metrics.json, report.html."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from galclip.atomic import json_ready, write_json
from galclip.config import EvalConfig
from galclip.evaluate.report import write_report
from galclip.evaluate.retrieval import (
    label_deltas,
    median_rank,
    neighbour_ids,
    non_finite_partners,
    partner_ranks,
    partner_recall,
)
from galclip.heads.models import standardisation, standardise
from galclip.neighbours import (
    drop_self,
    embedding_sources,
    flat_index,
    l2_normalise,
    top_k,
    zero_shot_shortfall,
    zero_shot_split,
    zero_shot_table,
)
from galclip.photoz import label_metrics

logger = logging.getLogger(__name__)

# direction -> (query modality, target modality)
DIRECTIONS = {
    "im2im": ("image", "image"),
    "sp2sp": ("spectrum", "spectrum"),
    "im2sp": ("image", "spectrum"),
    "sp2im": ("spectrum", "image"),
}


@dataclass
class EvaluationInputs:
    """Everything evaluation needs for n test pairs."""

    targetid: np.ndarray  # (n,) int64
    emb_image: np.ndarray  # (n, 128) float32 head outputs, not yet normalised
    emb_spectrum: np.ndarray  # (n, 128)
    raw_image: np.ndarray  # (n, 2048) frozen backbone features
    raw_spectrum: np.ndarray  # (n, 256)
    redshift: np.ndarray  # (n,) float, NaN where no catalogue label
    log_mstar: np.ndarray  # (n,) float, NaN where no catalogue label
    image_rgb: Callable[[np.ndarray], np.ndarray]  # indices (m,) -> (m, H, W, 3) in [0, 1]
    spectrum: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # indices -> (wave (L,), flux (m, L))
    loss_history: dict = field(default_factory=dict)  # {"train_loss": [...], "val_loss": [...], "lr": [...]}
    # optional: the store's labelled TRAIN pairs, on which the supervised reference is fitted
    # ({"raw_image": (n, 2048), "raw_spectrum": (n, 256), "redshift": (n,), "log_mstar": (n,)})
    supervised_train: dict | None = None
    # optional: the classic photo-z baseline's inputs, (n, 3) r, g - r, r - z from the catalogue (NaN without a row)
    photometry: np.ndarray | None = None
    # the store's other labels (the PROVABGS properties, --label columns): name -> (n,) float, NaN where none
    other_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def labels(self) -> dict[str, np.ndarray]:
        """Every label of the n pairs: redshift, log_mstar, then the others; name -> (n,) float64."""
        return {
            "redshift": np.asarray(self.redshift, dtype=np.float64),
            "log_mstar": np.asarray(self.log_mstar, dtype=np.float64),
            **{name: np.asarray(y, dtype=np.float64) for name, y in self.other_labels.items()},
        }


def _check_inputs(inputs: EvaluationInputs) -> int:
    """Validate row counts and dimensions; return n."""
    n = len(inputs.targetid)
    arrays = {
        name: getattr(inputs, name)
        for name in ("emb_image", "emb_spectrum", "raw_image", "raw_spectrum", "redshift", "log_mstar")
    }
    wrong = {name: np.shape(a) for name, a in arrays.items() if np.shape(a)[:1] != (n,)}
    if wrong:
        raise ValueError(f"every input needs {n} rows (len(targetid)); mismatched: {wrong}")
    if np.shape(inputs.emb_image)[1:] != np.shape(inputs.emb_spectrum)[1:]:
        raise ValueError(
            f"image and spectrum embeddings differ in dimension: "
            f"{np.shape(inputs.emb_image)} vs {np.shape(inputs.emb_spectrum)}"
        )
    if n < 2:
        raise ValueError(f"evaluation needs at least 2 test pairs, got {n}")
    return n


def _retrieval(emb: dict[str, np.ndarray], indexes: dict, labels: dict[str, np.ndarray], config: EvalConfig) -> dict:
    """Cross-modal partner ranks and in-modal neighbour label deltas."""
    n = emb["image"].shape[0]
    out: dict = {}
    for name, (q, t) in DIRECTIONS.items():
        if q == t:
            nbrs = neighbour_ids(emb[q], config.gallery_k, indexes[q])
            out[name] = {label: label_deltas(nbrs, y, config.seed) for label, y in labels.items()}
        else:
            ranks = partner_ranks(emb[q], emb[t])
            out[name] = {
                **partner_recall(ranks, (1, 5, 10)),
                "median_rank": median_rank(ranks),
                "chance_recall@10": min(10, n) / n,
                "n_queries": int(n),
            }
            bad = non_finite_partners(ranks)
            if bad:  # only then, so metrics.json of a healthy run keeps its keys
                out[name]["non_finite_partner_scores"] = bad
                logger.warning(
                    "%s: %d of %d queries have a NaN/inf partner similarity; counted as misses", name, bad, n
                )
    return out


def _galleries(
    inputs: EvaluationInputs, emb: dict[str, np.ndarray], indexes: dict, config: EvalConfig, out_dir: Path
) -> dict[str, Path]:
    """One PNG per direction: n_gallery_queries seeded queries, top gallery_k results each."""
    from galclip.evaluate.plots import plot_gallery

    n = emb["image"].shape[0]
    n_queries = min(n, config.n_gallery_queries)
    if n_queries < 1 or config.gallery_k < 1:
        return {}
    queries = np.random.default_rng(config.seed).choice(n, size=n_queries, replace=False)
    figures = {}
    for name, (q, t) in DIRECTIONS.items():
        in_modal = q == t
        k = min(config.gallery_k, n - int(in_modal))
        scores, ids = top_k(indexes[t], emb[q][queries], k + int(in_modal))
        if in_modal:
            scores, ids = drop_self(scores, ids, queries)
        figures[f"gallery_{name}"] = plot_gallery(
            queries,
            ids,
            scores,
            q,
            t,
            inputs.image_rgb,
            inputs.spectrum,
            out_dir / f"gallery_{name}.png",
            title=f"{name}: top {k} by cosine similarity",
            names=inputs.targetid,
        )
    return figures


def _standardise(x: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``train`` and ``test`` of x (n, d) standardised with the train rows' statistics, as the heads do."""
    mean, std = standardisation(np.asarray(x)[train])
    return standardise(np.asarray(x)[train], mean, std), standardise(np.asarray(x)[test], mean, std)


def _zero_shot(
    inputs: EvaluationInputs, emb: dict[str, np.ndarray], labels: dict[str, np.ndarray], config: EvalConfig
) -> tuple[dict, dict]:
    """k-NN table on a seeded split of the labelled pairs; returns (table, split info)."""
    tr, te = zero_shot_split(labels, config.knn_test_fraction, config.seed)
    sources = {
        **embedding_sources(emb["image"], emb["spectrum"], tr, te),
        "raw_image": _standardise(inputs.raw_image, tr, te),
        "raw_spectrum": _standardise(inputs.raw_spectrum, tr, te),
    }
    if inputs.photometry is not None:
        phot = np.asarray(inputs.photometry, np.float64)
        if np.isfinite(phot[np.concatenate([tr, te])]).all():
            sources["photometry"] = _standardise(phot, tr, te)
        else:
            logger.warning("the photometry baseline is left out: some labelled pairs have no catalogue magnitudes")
    targets = {name: (y[tr], y[te]) for name, y in labels.items()}
    table = zero_shot_table(sources, targets, config.k)
    info = {
        "k": config.k,
        "weights": "distance",
        "split": "seeded halves (fit, query) of the labelled test pairs",
        "n_train": int(tr.size),
        "n_test": int(te.size),
        "n_labelled": {name: int(np.isfinite(y).sum()) for name, y in labels.items()},
        "baselines": {
            "raw_image": "k-NN on the standardised frozen image features (2048-d)",
            "raw_spectrum": "k-NN on the standardised frozen spectrum features (256-d)",
            **(
                {"photometry": "k-NN on the catalogue's r, g-r, r-z (standardised): the classic photo-z baseline"}
                if "photometry" in sources
                else {}
            ),
        },
    }
    info["r2_other_k"] = {
        f"k{k}": {
            s: {t: cell["r2"] for t, cell in row.items()} for s, row in zero_shot_table(sources, targets, k).items()
        }
        for k in config.extra_k
        if k != config.k
    }
    if config.supervised:
        from galclip.evaluate.supervised import supervised_table

        fit = inputs.supervised_train
        if fit is not None:  # fit on the store's train split, score on the k-NN test split
            raw = {}
            for name in ("raw_image", "raw_spectrum"):
                mean, std = standardisation(fit[name])
                raw[name] = (
                    standardise(fit[name], mean, std),
                    standardise(np.asarray(getattr(inputs, name))[te], mean, std),
                )
            sup_targets = {name: (np.asarray(fit[name], np.float64), y[te]) for name, y in labels.items()}
            info["supervised_fit_rows"] = int(len(fit["redshift"]))
        else:
            raw = {name: sources[name] for name in ("raw_image", "raw_spectrum")}
            sup_targets = targets
            info["supervised_fit_rows"] = int(tr.size)
        info["supervised_r2"] = supervised_table(raw, sup_targets, config.seed)
    return table, info


def photoz_table(table: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """The photo-z field's measures (``galclip.photoz``) of every cell of a zero-shot table, beside its R²."""
    return {
        s: {t: label_metrics(t, cell["true"], cell["pred"], cell["lo"], cell["hi"]) for t, cell in row.items()}
        for s, row in table.items()
    }


def best_sources(r2: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per target, the zero-shot sources ranked by R² (best first): {"ranking": [(source, r2), ...], "best": source}."""
    out = {}
    for target in dict.fromkeys(t for row in r2.values() for t in row):
        ranked = sorted(
            ((s, row[target]) for s, row in r2.items() if row.get(target) is not None and math.isfinite(row[target])),
            key=lambda item: -item[1],
        )
        if ranked:
            out[target] = {"best": ranked[0][0], "ranking": [[s, v] for s, v in ranked]}
    return out


def run_evaluation(
    inputs: EvaluationInputs,
    config: EvalConfig,
    out_dir: Path,
    extra_metrics: dict | None = None,
    started: float | None = None,
    test_fraction: float = 0.1,
) -> dict:
    """Evaluate one set of test-split embeddings; write figures, metrics.json, report.html.

    Embeddings are L2-normalised (eq. 5) and searched with exact FAISS inner product.
    Returns the metrics as written to ``out_dir / "metrics.json"`` (NaN -> None).
    """
    from galclip.evaluate.plots import plot_pred_vs_true, plot_umap
    from galclip.figures import plot_loss_curves

    n = _check_inputs(inputs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    labels = inputs.labels()
    shortfall = zero_shot_shortfall(labels, config, test_fraction)
    if shortfall:
        logger.warning("%s", shortfall["note"])

    t0 = time.perf_counter()
    emb = {"image": l2_normalise(inputs.emb_image), "spectrum": l2_normalise(inputs.emb_spectrum)}
    indexes = {name: flat_index(e, "ip") for name, e in emb.items()}
    retrieval = _retrieval(emb, indexes, labels, config)
    timings["eval_retrieval"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    table, knn_info = _zero_shot(inputs, emb, labels, config)
    timings["eval_zero_shot"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    figures: dict[str, Path] = {
        "loss_curves": plot_loss_curves(inputs.loss_history, out_dir / "loss_curves.png"),
        "zero_shot": plot_pred_vs_true(table, out_dir / "zero_shot_pred_vs_true.png"),
    }
    figures.update(_galleries(inputs, emb, indexes, config, out_dir))
    timings["eval_figures"] = time.perf_counter() - t0

    if config.umap:
        from galclip.index.embedding_map import cached_umap

        t0 = time.perf_counter()
        umap_info = {
            "max_points": config.umap_max_points,
            "fit_points": min(n, config.umap_max_points),
            "cache": config.umap_cache,
            "from_cache": {},
        }
        for name, e in emb.items():
            coords, umap_info["from_cache"][name] = cached_umap(
                e, config.umap_max_points, config.seed, config.umap_cache
            )
            figures[f"umap_{name}"] = plot_umap(coords, labels, out_dir / f"umap_{name}.png", title=f"{name} embedding")
        timings["eval_umap"] = time.perf_counter() - t0

    metrics: dict = {
        "n_pairs": n,
        "n_eval": n,
        **({"umap": umap_info} if config.umap else {}),
        "n_labelled": int(np.any([np.isfinite(y) for y in labels.values()], axis=0).sum()),
        "zero_shot_r2": {s: {t: cell["r2"] for t, cell in row.items()} for s, row in table.items()},
        "zero_shot_photoz": photoz_table(table),
        "zero_shot_best": best_sources({s: {t: cell["r2"] for t, cell in row.items()} for s, row in table.items()}),
        **{f"zero_shot_r2_{k}": t for k, t in knn_info.pop("r2_other_k").items()},
        **({"supervised_r2": knn_info.pop("supervised_r2")} if "supervised_r2" in knn_info else {}),
        "zero_shot": knn_info,
        **({"zero_shot_shortfall": shortfall} if shortfall else {}),
        "retrieval": retrieval,
        "figures": {name: p.name for name, p in figures.items()},
        "eval_config": {k: getattr(config, k) for k in config.__dataclass_fields__},
    }
    extra = dict(extra_metrics or {})
    extra_timings = dict(extra.pop("timings_s", None) or {})
    metrics["timings_s"] = {**extra_timings, **{k: v for k, v in timings.items() if k not in extra_timings}}
    if started is not None:  # the caller's whole evaluation, from its own start (time.perf_counter())
        metrics["timings_s"]["evaluate"] = time.perf_counter() - started
    metrics.update(extra)
    metrics = json_ready(metrics)
    write_json(metrics, out_dir / "metrics.json")
    write_report(metrics, figures, out_dir / "report.html")

    cross = retrieval["im2sp"]
    r2 = metrics["zero_shot_r2"]
    shown = lambda v: "n/a" if v is None else f"{v:.3f}"
    logger.info(
        "evaluation of %d pairs: im->sp recall@10 %.3f (chance %.3f), median rank %.0f; "
        "zero-shot redshift R² image %s, spectrum %s, cross %s",
        n,
        cross["recall@10"],
        cross["chance_recall@10"],
        cross["median_rank"],
        shown(r2["image"]["redshift"]),
        shown(r2["spectrum"]["redshift"]),
        shown(r2["cross"]["redshift"]),
    )
    return metrics
