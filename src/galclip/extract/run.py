"""Stage one: run the frozen encoders once over every pair and stream features into the store."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from galclip.config import ExtractConfig
from galclip.data.catalogue import join_labels
from galclip.data.split import assign_split
from galclip.data.survey import SurveyReader
from galclip.extract.image_encoder import IMAGE_FEATURE_DIM, build_image_encoder
from galclip.extract.preprocess import preprocess_images, zscore_spectra
from galclip.extract.spectrum_encoder import SPECTRUM_FEATURE_DIM, build_spectrum_encoder
from galclip.provenance import code_version, resolve_device, sha256_file
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

ROWS_PER_SHARD = 256


def _weights_record(path: str | None, seed: int, kind: str) -> dict:
    if path is None:
        return {"source": "random", "seed": seed, "note": f"seeded random {kind} weights: NOT a pretrained encoder"}
    return {"source": str(Path(path).resolve()), "sha256": sha256_file(path)}


def build_provenance(config: ExtractConfig, reader: SurveyReader, catalogue: str | None) -> dict:
    """Everything needed to know what the store's features are and where they came from."""
    return {
        "encoders": {
            "image": {"architecture": "torchvision resnet50 trunk (MoCo-v2, Stein et al. 2021)",
                      "features": "global average pool", "dim": IMAGE_FEATURE_DIM,
                      "weights": _weights_record(config.image_weights, config.seed, "image")},
            "spectrum": {"architecture": "spender SpectrumEncoder (Melchior et al. 2023)",
                         "features": "attention-weighted sum e = sum h*softmax(a)", "dim": SPECTRUM_FEATURE_DIM,
                         "weights": _weights_record(config.spectrum_weights, config.seed, "spectrum")},
        },
        "preprocessing": {
            "image": {"layout_in": "(W,H,C) g,r,z", "centre_crop": config.crop, "rgb": config.rgb},
            "spectrum": {"normalisation": "per-spectrum z-score"},
        },
        "data": reader.fingerprint(),
        "catalogue": str(Path(catalogue).resolve()) if catalogue else None,
        "split": {"method": "splitmix64(targetid) < val_fraction", "val_fraction": config.val_fraction},
        "rows_per_shard": ROWS_PER_SHARD,
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "config": asdict(config),
    }


class Encoders:
    """Both frozen encoders on one device, with the preprocessing in front of them."""

    def __init__(self, config: ExtractConfig, device: torch.device):
        self.config = config
        self.device = device
        trunk, self.fc_state = build_image_encoder(config.image_weights, config.seed)
        self.image = trunk.to(device, memory_format=torch.channels_last)
        self.spectrum = build_spectrum_encoder(config.spectrum_weights, config.seed).to(device)
        self.autocast = device.type == "cuda"  # bf16 only on GPUs: ~100x slower on AVX2 CPUs

    @torch.inference_mode()
    def __call__(self, images_whc: np.ndarray, spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, 152, 152, 3), (B, 7781) -> (B, 2048), (B, 256) float32 features."""
        x = preprocess_images(torch.from_numpy(images_whc).to(self.device, non_blocking=True),
                              self.config.crop, self.config.rgb).contiguous(memory_format=torch.channels_last)
        y = zscore_spectra(torch.from_numpy(spectra).to(self.device, non_blocking=True))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            fi = self.image(x)
            fs = self.spectrum.features(y)
        return fi.float().cpu().numpy(), fs.float().cpu().numpy()


def run_extraction(data: str | Path | list, store_path: str | Path, config: ExtractConfig, progress: bool = True) -> dict:
    """Extract features of every pair in ``data`` into the store at ``store_path``; resumable.

    Returns a summary: pairs, shards written and skipped, seconds, pairs/s.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    reader = SurveyReader(data)
    catalogue = config.catalogue
    if catalogue is None and isinstance(data, (str, Path)) and Path(data).is_dir() and (Path(data) / "provabgs.h5").exists():
        catalogue = str(Path(data) / "provabgs.h5")
        logger.info("using the catalogue found beside the survey: %s", catalogue)
    provenance = build_provenance(config, reader, catalogue)
    store_path = Path(store_path)
    if store_path.exists():
        store = FeatureStore.open(store_path, mode="r+")
        store.check_compatible(provenance)
    else:
        targetid = reader.targetids()
        if catalogue:
            labels = join_labels(targetid, catalogue)
            label_z, label_m = labels.redshift, labels.log_mstar
        else:
            logger.warning("no catalogue given: stellar-mass and catalogue-redshift labels will be empty")
            label_z = label_m = np.full(len(targetid), np.nan, np.float32)
        meta = {"targetid": targetid, "split": assign_split(targetid, config.val_fraction),
                "redshift": reader.redshifts(), "label_redshift": label_z, "label_log_mstar": label_m}
        store = FeatureStore.create(store_path, meta, provenance, rows_per_shard=ROWS_PER_SHARD)
    todo = np.flatnonzero(~store.complete_mask())
    if todo.size == 0:
        logger.info("%s: all %d shards already complete; nothing to do", store_path, store.n_shards)
        return {"pairs": store.n, "shards_written": 0, "shards_skipped": store.n_shards, "seconds": 0.0,
                "pairs_per_s": 0.0, "store": str(store_path), "already_complete": True}
    for kind in ("image", "spectrum"):
        if provenance["encoders"][kind]["weights"]["source"] == "random":
            logger.warning("no %s checkpoint given: using seeded RANDOM %s-encoder weights (recorded in the store)", kind, kind)

    device = resolve_device(config.device)
    encoders = Encoders(config, device)
    n_rows = int(sum(np.subtract(*store.shard_rows(s)[::-1]) for s in todo))
    bar = tqdm(total=n_rows, unit="pair", desc="extract", disable=not progress, smoothing=0.1)
    t1 = time.perf_counter()
    for shard in todo:
        lo, hi = store.shard_rows(int(shard))
        feats_i, feats_s = [], []
        for start in range(lo, hi, config.batch_size):
            batch = reader.read(start, min(start + config.batch_size, hi))
            fi, fs = encoders(batch.image, batch.spectrum)
            feats_i.append(fi)
            feats_s.append(fs)
            bar.update(len(batch.targetid))
        store.write_shard(int(shard), {"image_features": np.concatenate(feats_i),
                                       "spectrum_features": np.concatenate(feats_s)})
    bar.close()
    reader.close()
    elapsed = time.perf_counter() - t1
    summary = {"pairs": store.n, "pairs_extracted": n_rows, "shards_written": int(todo.size),
               "shards_skipped": int(store.n_shards - todo.size), "seconds": time.perf_counter() - t0,
               "pairs_per_s": n_rows / max(elapsed, 1e-9), "device": str(device), "store": str(store_path)}
    logger.info("extracted %d pairs in %.1f s (%.1f pairs/s on %s) -> %s",
                n_rows, elapsed, summary["pairs_per_s"], device, store_path)
    return summary
