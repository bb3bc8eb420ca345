"""Evaluate trained heads on a feature store: embed the validation pairs, then ``run_evaluation``."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from galclip.config import EvalConfig
from galclip.evaluate.run import EvaluationInputs, run_evaluation
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)


class SurveyRows:
    """Reads survey rows (for galleries) by store row; blank when the survey files are gone."""

    def __init__(self, provenance: dict, rows: np.ndarray, crop: int, rgb: str):
        from galclip.data.survey import SurveyReader

        self.rows, self.crop, self.rgb = rows, crop, rgb
        files = provenance.get("data", {}).get("files", [])
        try:
            self.reader = SurveyReader(files) if files else None
        except Exception as err:  # noqa: BLE001 - galleries are optional; metrics do not need the pixels
            logger.warning("survey files of the store are not readable (%s): galleries will be blank", err)
            self.reader = None

    @classmethod
    def for_store(cls, store: FeatureStore, rows: np.ndarray) -> "SurveyRows":
        """Store rows (m,) of ``store``'s survey, drawn with the crop and RGB mapping the store was made with."""
        pre = store.provenance.get("preprocessing", {}).get("image", {})
        return cls(store.provenance, rows, int(pre.get("centre_crop", 96)), pre.get("rgb", "lupton"))

    def image_rgb(self, idx: np.ndarray) -> np.ndarray:
        """Validation indices (m,) -> (m, crop, crop, 3) RGB in [0, 1]."""
        from galclip.extract.preprocess import preprocess_images

        if self.reader is None:
            return np.zeros((len(idx), self.crop, self.crop, 3), np.float32)
        imgs = np.concatenate([self.reader.read(int(r), int(r) + 1).image for r in self.rows[idx]])
        return preprocess_images(imgs, self.crop, self.rgb).permute(0, 2, 3, 1).numpy()

    def spectrum(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validation indices (m,) -> (wave (7781,), flux (m, 7781))."""
        from galclip.data.layout import DESI_N_BINS, desi_wavelength

        if self.reader is None:
            return desi_wavelength(), np.zeros((len(idx), DESI_N_BINS), np.float32)
        return desi_wavelength(), np.concatenate([self.reader.read(int(r), int(r) + 1).spectrum for r in self.rows[idx]])


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

    from galclip.heads.train import checkpoint_file, load_heads

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
