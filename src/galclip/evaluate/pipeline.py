"""Evaluate trained heads on a feature store: embed the test pairs, then ``run_evaluation``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from galclip.config import EvalConfig
from galclip.evaluate.run import EvaluationInputs, run_evaluation
from galclip.evaluate.survey_rows import SurveyRows
from galclip.neighbours import zero_shot_shortfall
from galclip.outputs import check_output_dir, output_dir
from galclip.split import SELECTION, TEST, TRAIN, split_fractions
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

REPORT_NAMES = ("report.html", "metrics.json", "*.png")  # what an evaluate report folder holds


def _labelled_train_rows(
    readable: np.ndarray, split: np.ndarray, labels: dict[str, np.ndarray], max_rows: int = 50_000
) -> np.ndarray | None:
    """Store rows (m,) of the labelled train pairs (at most ``max_rows``, evenly spaced) on which the
    supervised reference is fitted; None with fewer than 20."""
    rows = np.flatnonzero(
        readable & (split == TRAIN) & np.isfinite(labels["redshift"]) & np.isfinite(labels["log_mstar"])
    )
    if rows.size < 20:
        return None
    return rows[np.linspace(0, rows.size - 1, min(rows.size, max_rows)).astype(int)]


def product_protocol(
    store: FeatureStore,
    heads,
    readable: np.ndarray,
    test_rows: np.ndarray,
    test_embeddings: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    seed: int = 0,
) -> dict | None:
    """The product's zero-shot protocol scored on the test pairs: the one predictor (``galclip predict``, the page,
    ``search --json``) with its reference set, the store's labelled train-split pairs in the query's own modality,
    k = 16. test_embeddings: modality -> (m, 128) unit vectors of ``test_rows``. Returns {"protocol", "k",
    "reference_n", "r2": {modality: {label: R²}}, "coverage_68": ...}, or None with too few reference pairs.
    The train pairs are embedded block by block (``embed_store``): memory holds 128 floats a reference pair."""
    from galclip.index.embed import embed_store
    from galclip.index.zero_shot import DEFAULT_K, Reference
    from galclip.neighbours import r2_score
    from galclip.photoz import pit_histogram
    from galclip.vocabulary import LABELS, MODALITIES

    split = store.split()
    labelled = readable & np.all([np.isfinite(labels[name]) for name in LABELS], 0)
    ref_rows = np.flatnonzero(labelled & (split == TRAIN))
    if len(ref_rows) < DEFAULT_K + 1:
        return None
    cal_rows = np.flatnonzero(labelled & (split == SELECTION))  # the intervals are calibrated here, never on test
    rows = np.union1d(ref_rows, cal_rows)
    emb_all = {m: np.empty((len(rows), heads.image.sizes[-1]), np.float32) for m in MODALITIES}
    for lo, z in embed_store(store, heads, rows):
        for m in MODALITIES:
            emb_all[m][lo : lo + len(z[m])] = z[m]
    at_ref, at_cal = np.searchsorted(rows, ref_rows), np.searchsorted(rows, cal_rows)
    targetid = store.targetids()
    out: dict = {
        "protocol": "product: k-NN over the labelled train-split pairs in the query's modality, k = 16, "
        "intervals calibrated on the selection split and the reference left out one by one, scored on the test "
        "pairs (what 'galclip predict' and the page give)",
        "k": DEFAULT_K,
        "reference_n": int(len(ref_rows)),
        "calibration_n": None,
        "r2": {},
        "coverage_68": {},
        "pit_max_over_uniform": {},
        "stretch": {},
    }
    for m in MODALITIES:
        ref = Reference.from_arrays(
            m,
            "train",
            targetid[ref_rows],
            emb_all[m][at_ref],
            {name: y[ref_rows] for name, y in labels.items()},
            seed,
            (emb_all[m][at_cal], {name: y[cal_rows] for name, y in labels.items()}),
        )
        pred = ref.predict(test_embeddings[m], DEFAULT_K, targetid[test_rows])
        out["r2"][m], out["coverage_68"][m], out["pit_max_over_uniform"][m] = {}, {}, {}
        out["stretch"][m] = ref.stretch(DEFAULT_K)
        out["calibration_n"] = ref.n_calibration(DEFAULT_K)
        for name in labels:
            true = labels[name][test_rows].astype(np.float64)
            has = np.isfinite(true) & np.isfinite(pred.labels[name][0])
            value, lo, hi = (a[has] for a in pred.labels[name])
            out["r2"][m][name] = r2_score(true[has], value) if has.sum() > 1 else None
            out["coverage_68"][m][name] = float(np.mean((lo <= true[has]) & (true[has] <= hi))) if has.any() else None
            out["pit_max_over_uniform"][m][name] = pit_histogram(pred.pit(name, true)[has])["max_over_uniform"]
    return out


def _photometry(
    store: FeatureStore, targetid: np.ndarray, positions: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray | None, str]:
    """(n, 3) r, g - r, r - z of the evaluated pairs from the catalogue the store was labelled with, and a note
    saying where they came from (or why the photometry baseline is left out)."""
    from galclip.data.catalogue import photometry_features
    from galclip.errors import GalclipError

    path = store.provenance.get("catalogue")
    if not path:
        return None, "left out: the store was extracted without a catalogue"
    if not Path(path).exists():
        return None, f"left out: the store's catalogue {path} is not here"
    try:
        return photometry_features(targetid, path, positions), f"r, g-r, r-z from {path}"
    except GalclipError as err:
        return None, f"left out: {err}"


def evaluate_store(
    store_path: str | Path,
    heads_path: str | Path,
    out_dir: str | Path,
    config: EvalConfig,
    extra_metrics: dict | None = None,
    allow_partial: bool = False,
    overwrite: bool = False,
    strict_k: bool = False,
) -> dict:
    """Embed the store's test pairs (``galclip.split``: never used to fit or choose the heads) with the heads and
    write the report; returns metrics.

    ``timings_s.evaluate`` is this call's wall time; other ``extra_metrics`` are merged as given.
    UMAP coordinates are cached in ``config.umap_cache``, by default ``umap_cache/`` beside the heads.
    """
    import dataclasses

    from galclip.heads.checkpoint import checkpoint_file, load_heads

    if config.umap and config.umap_cache is None:
        config = dataclasses.replace(config, umap_cache=str(checkpoint_file(heads_path).parent / "umap_cache"))
    t0 = time.perf_counter()
    check_output_dir(out_dir, "evaluate", REPORT_NAMES, overwrite)
    store = FeatureStore.open(store_path)
    heads, ckpt = load_heads(heads_path, store)
    readable = store.require_complete(allow_partial)
    split, labels = store.split(), store.labels()
    test_rows = np.flatnonzero(readable & (split == TEST))
    if len(test_rows) < 2:
        from galclip.errors import GalclipError

        raise GalclipError(f"{store_path}: only {len(test_rows)} test pair(s) are readable; evaluation needs 2 or more")
    test_fraction, selection_fraction = split_fractions(store.provenance)
    shortfall = zero_shot_shortfall({name: y[test_rows] for name, y in labels.items()}, config, test_fraction)
    if strict_k and shortfall and shortfall["fit_rows"] and max(shortfall["fit_rows"].values()) < config.k + 1:
        from galclip.errors import InputError

        raise InputError(f"-k {config.k}: {shortfall['note']}")
    rows = SurveyRows.for_store(store, test_rows, blank_if_missing=True)  # refuses changed survey files, before writing
    fit_rows = _labelled_train_rows(readable, split, labels)
    # only the rows evaluation uses are read, shard by shard: the test pairs and the reference's sample
    wanted = test_rows if fit_rows is None else np.union1d(test_rows, fit_rows)
    feats = store.read_rows(wanted, ("image_features", "spectrum_features"))
    at = lambda rows: np.searchsorted(wanted, rows)
    raw_image, raw_spectrum = feats["image_features"][at(test_rows)], feats["spectrum_features"][at(test_rows)]
    emb_i, emb_s = heads.embed(raw_image, raw_spectrum)
    from galclip.neighbours import l2_normalise

    product = product_protocol(
        store,
        heads,
        readable,
        test_rows,
        {"image": l2_normalise(emb_i), "spectrum": l2_normalise(emb_s)},
        labels,
        config.seed,
    )
    history = ckpt.get("history", [])
    supervised = (
        None
        if fit_rows is None
        else {
            "raw_image": feats["image_features"][at(fit_rows)],
            "raw_spectrum": feats["spectrum_features"][at(fit_rows)],
            **{name: y[fit_rows] for name, y in labels.items()},
        }
    )
    sky = store.positions()
    photometry, photometry_note = _photometry(
        store, store.targetids()[test_rows], None if sky is None else (sky[0][test_rows], sky[1][test_rows])
    )
    inputs = EvaluationInputs(
        targetid=store.targetids()[test_rows],
        emb_image=emb_i,
        emb_spectrum=emb_s,
        raw_image=raw_image,
        raw_spectrum=raw_spectrum,
        redshift=labels["redshift"][test_rows],
        log_mstar=labels["log_mstar"][test_rows],
        image_rgb=rows.image_rgb,
        spectrum=rows.spectrum,
        loss_history={k: [h[k] for h in history] for k in ("train_loss", "val_loss", "lr")},
        supervised_train=supervised,
        photometry=photometry,
        other_labels={name: y[test_rows] for name, y in labels.items() if name not in ("redshift", "log_mstar")},
    )
    extra = dict(extra_metrics or {})
    extra.setdefault("n_pairs", store.n)
    extra["store_fingerprint"] = store.fingerprint()
    extra["splits"] = {
        "every_number_from": "test",
        "test": {
            "rule": f"u < {test_fraction}",
            "n": int((split == TEST).sum()),
            "readable": int(len(test_rows)),
            "used_for": "every number of this report; the zero-shot k-NN runs on seeded halves of it",
        },
        "selection": {
            "rule": f"{test_fraction} <= u < {test_fraction + selection_fraction}",
            "n": int((split == SELECTION).sum()),
            "used_for": "the learning-rate schedule, early stopping, the best epoch, the sweep's choice",
        },
        "train": {
            "rule": f"u >= {test_fraction + selection_fraction}",
            "n": int((split == TRAIN).sum()),
            "used_for": "fitting the heads, the supervised reference",
        },
        "u": "SplitMix64 hash of the targetid mapped to [0, 1)",
    }
    extra["photometry_baseline"] = photometry_note
    extra["zero_shot_protocol"] = (
        "seed: the k-NN fits on a seeded half of the labelled test pairs and predicts the "
        "other half (zero_shot_r2, the numbers AstroCLIP reports)"
    )
    if product is not None:
        extra["zero_shot_product"] = product
    extra["heads"] = {
        "best_epoch": ckpt.get("best_epoch"),
        "best_val_loss": ckpt.get("best_val_loss"),
        "config": ckpt.get("config"),
    }
    extra["encoders"] = {k: v.get("weights", {}).get("source") for k, v in store.provenance.get("encoders", {}).items()}
    with output_dir(out_dir, "evaluate", REPORT_NAMES, overwrite=True):
        return run_evaluation(
            inputs, config, Path(out_dir), extra_metrics=extra, started=t0, test_fraction=test_fraction
        )
