"""Evaluate trained heads on a feature store: embed the validation pairs, then ``run_evaluation``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from galclip.config import EvalConfig
from galclip.evaluate.run import EvaluationInputs, run_evaluation
from galclip.evaluate.survey_rows import SurveyRows
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)


def _labelled_train(data: dict[str, np.ndarray], max_rows: int = 50_000) -> dict | None:
    """The store's labelled train pairs (at most ``max_rows``, evenly spaced) for the supervised reference."""
    rows = np.flatnonzero((data["split"] == 0) & np.isfinite(data["label_redshift"]) & np.isfinite(data["label_log_mstar"]))
    if rows.size < 20:
        return None
    rows = rows[np.linspace(0, rows.size - 1, min(rows.size, max_rows)).astype(int)]
    return {"raw_image": data["image_features"][rows], "raw_spectrum": data["spectrum_features"][rows],
            "redshift": data["label_redshift"][rows], "log_mstar": data["label_log_mstar"][rows]}


def evaluate_store(
    store_path: str | Path, heads_path: str | Path, out_dir: str | Path, config: EvalConfig,
    extra_metrics: dict | None = None, allow_partial: bool = False,
) -> dict:
    """Embed the store's validation pairs with the heads and write the report; returns metrics.

    ``timings_s.evaluate`` is this call's wall time; other ``extra_metrics`` are merged as given.
    UMAP coordinates are cached in ``config.umap_cache``, by default ``umap_cache/`` beside the heads.
    """
    import dataclasses

    from galclip.heads.checkpoint import checkpoint_file, load_heads

    if config.umap and config.umap_cache is None:
        config = dataclasses.replace(config, umap_cache=str(checkpoint_file(heads_path).parent / "umap_cache"))
    t0 = time.perf_counter()
    store = FeatureStore.open(store_path)
    heads, ckpt = load_heads(heads_path, store)
    data = store.load(allow_partial=allow_partial)
    rows_all = np.flatnonzero(store.require_complete(allow_partial))
    val = data["split"] == 1
    if val.sum() < 2:
        from galclip.errors import GalclipError

        raise GalclipError(f"{store_path}: only {int(val.sum())} validation pair(s) are readable; evaluation needs 2 or more")
    emb_i, emb_s = heads.embed(data["image_features"][val], data["spectrum_features"][val])
    history = ckpt.get("history", [])
    rows = SurveyRows.for_store(store, rows_all[val])
    inputs = EvaluationInputs(
        targetid=data["targetid"][val], emb_image=emb_i, emb_spectrum=emb_s,
        raw_image=data["image_features"][val], raw_spectrum=data["spectrum_features"][val],
        redshift=data["label_redshift"][val], log_mstar=data["label_log_mstar"][val],
        image_rgb=rows.image_rgb, spectrum=rows.spectrum,
        loss_history={k: [h[k] for h in history] for k in ("train_loss", "val_loss", "lr")},
        supervised_train=_labelled_train(data),
    )
    extra = dict(extra_metrics or {})
    extra.setdefault("n_pairs", store.n)
    extra["store_fingerprint"] = store.fingerprint()
    extra["heads"] = {"best_epoch": ckpt.get("best_epoch"), "best_val_loss": ckpt.get("best_val_loss"),
                      "config": ckpt.get("config")}
    extra["encoders"] = {k: v.get("weights", {}).get("source") for k, v in store.provenance.get("encoders", {}).items()}
    return run_evaluation(inputs, config, Path(out_dir), extra_metrics=extra, started=t0)
