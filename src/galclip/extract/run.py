"""Stage one: run the frozen encoders once over every pair and stream features into the store.

Work is split into shards of ``rows_per_shard`` rows. A run (or each torchrun rank) takes the
incomplete shards it owns — shard s belongs to rank s mod world_size — reads them through a
DataLoader (each worker with its own HDF5 handles), runs both encoders, and writes each shard
whole, flagging it complete only once it is on disk. Killing a run loses at most the shards in
flight; running the same command again finishes the job with identical arrays.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from galclip.config import ExtractConfig
from galclip.data.catalogue import join_labels
from galclip.data.split import assign_split
from galclip.data.survey import SurveyReader
from galclip.extract.augment import augment_images, augment_spectra
from galclip.extract.image_encoder import IMAGE_FEATURE_DIM, build_image_encoder
from galclip.extract.preprocess import grz_to_rgb, images_to_chw, preprocess_images, zscore_spectra
from galclip.errors import InputError, StoreError
from galclip.extract.spectrum_encoder import SPECTRUM_FEATURE_DIM, build_spectrum_encoder
from galclip.extract.validate import REASONS, bad_row_codes
from galclip.provenance import code_version, resolve_device, sha256_file
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

AUGMENT_VERSION = 1  # bump when the augmentation recipe changes: stores then refuse to mix


def _weights_record(path: str | None, seed: int, kind: str) -> dict:
    if path is None:
        return {"source": "random", "seed": seed, "note": f"seeded random {kind} weights: NOT a pretrained encoder"}
    return {"source": str(Path(path).resolve()), "sha256": sha256_file(path)}


def build_provenance(config: ExtractConfig, reader: SurveyReader, catalogue: str | None,
                     device_type: str = "cpu") -> dict:
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
            "image": {"layout_in": "(W,H,C) g,r,z", "centre_crop": config.crop, "rgb": config.rgb_mapping},
            "spectrum": {"normalisation": "per-spectrum z-score"},
            # bf16 autocast on GPUs changes the features' last bits: a store is finished on the kind it began on
            "compute": {"device_type": device_type, "bf16_autocast": device_type == "cuda"},
            "variants": {"image": config.variants, "spectrum": config.spectrum_variants,
                         "seed": config.seed, "augment_version": AUGMENT_VERSION,
                         "image_recipe": "rotate(any angle)+flips+jitter(7px)+crop, extra PSF blur, extra sky noise",
                         "spectrum_recipe": "noise re-draw at the robust per-spectrum noise level"},
        },
        "data": reader.fingerprint(),
        "catalogue": str(Path(catalogue).resolve()) if catalogue else None,
        "split": {"method": "splitmix64(targetid) < val_fraction", "val_fraction": config.val_fraction},
        "rows_per_shard": config.rows_per_shard,
        "code_version": code_version(),
        "torch_version": torch.__version__,
        "config": asdict(config),
    }


def feature_arrays(config: ExtractConfig) -> dict[str, tuple[int, ...]]:
    """The store's feature arrays for this configuration: name -> shape after the row axis."""
    arrays = {"image_features": (IMAGE_FEATURE_DIM,), "spectrum_features": (SPECTRUM_FEATURE_DIM,)}
    if config.variants:
        arrays["image_features_aug"] = (config.variants, IMAGE_FEATURE_DIM)
    if config.spectrum_variants:
        arrays["spectrum_features_aug"] = (config.spectrum_variants, SPECTRUM_FEATURE_DIM)
    return arrays


class Encoders:
    """Both frozen encoders on one device, with preprocessing and augmented views in front."""

    def __init__(self, config: ExtractConfig, device: torch.device):
        self.config = config
        self.device = device
        trunk, self.fc_state = build_image_encoder(config.image_weights, config.seed)
        self.image = trunk.to(device, memory_format=torch.channels_last)
        self.spectrum = build_spectrum_encoder(config.spectrum_weights, config.seed).to(device)
        if config.compile:
            self.image, self.spectrum_features = torch.compile(self.image), torch.compile(self.spectrum.features)
        else:
            self.spectrum_features = self.spectrum.features
        self.autocast = device.type == "cuda"  # bf16 only on GPUs: ~100x slower on AVX2 CPUs

    def _image_features(self, rgb: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.image(rgb.contiguous(memory_format=torch.channels_last)).float()

    def _spectrum_features(self, spectra: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.spectrum_features(zscore_spectra(spectra)).float()

    @torch.inference_mode()
    def __call__(self, images_whc: torch.Tensor, spectra: torch.Tensor, targetid: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 152, 152, 3), (B, 7781), (B,) -> feature arrays, e.g. image_features (B, 2048)."""
        cfg = self.config
        images = images_whc.to(self.device, non_blocking=True)
        spectra = spectra.to(self.device, non_blocking=True)
        out = {"image_features": self._image_features(preprocess_images(images, cfg.crop, cfg.rgb_mapping)),
               "spectrum_features": self._spectrum_features(spectra)}
        if cfg.variants:
            chw = images_to_chw(images)
            out["image_features_aug"] = torch.stack([
                self._image_features(grz_to_rgb(augment_images(chw, targetid, v, cfg.crop, cfg.seed), cfg.rgb_mapping))
                for v in range(cfg.variants)], dim=1)
        if cfg.spectrum_variants:
            out["spectrum_features_aug"] = torch.stack([
                self._spectrum_features(augment_spectra(spectra, targetid, v, cfg.seed))
                for v in range(cfg.spectrum_variants)], dim=1)
        return {k: v.cpu().numpy() for k, v in out.items()}


class RowRanges(torch.utils.data.Dataset):
    """Batches of survey rows for a DataLoader; each worker process opens its own HDF5 handles."""

    def __init__(self, reader: SurveyReader, ranges: list[tuple[int, int, int]]):
        self.reader, self.ranges = reader, ranges

    def __len__(self) -> int:
        return len(self.ranges)

    def __getitem__(self, i: int) -> dict:
        shard, lo, hi = self.ranges[i]
        b = self.reader.read(lo, hi)
        codes = bad_row_codes(b.image, b.spectrum)
        if codes.any():  # neutral inputs for bad rows; their features are set to NaN and the rows quarantined
            b.image[codes != 0] = 0.0
            b.spectrum[codes != 0] = np.linspace(-1.0, 1.0, b.spectrum.shape[1], dtype=np.float32)
        return {"shard": shard, "start": lo, "codes": codes, "image": torch.from_numpy(np.ascontiguousarray(b.image)),
                "spectrum": torch.from_numpy(np.ascontiguousarray(b.spectrum)), "targetid": b.targetid}


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device_type: str) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            import torch.distributed as dist

            if device_type == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # object collectives need it
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, error: BaseException | None) -> None:
        """Collective: every rank learns whether any rank failed. The failing rank re-raises its own error;
        the others raise one naming it, instead of waiting at the next collective until the timeout."""
        if self.world > 1:
            import torch.distributed as dist

            messages: list = [None] * self.world
            dist.all_gather_object(messages, None if error is None else str(error))
            failed = [(r, m) for r, m in enumerate(messages) if m is not None]
            if failed and error is None:
                rank, message = failed[0]
                raise StoreError(f"rank {rank} stopped the job: {message}")
        if error is not None:
            raise error


def _open_or_create(store_path: Path, reader: SurveyReader, config: ExtractConfig, catalogue: str | None,
                    provenance: dict, fc_state: dict | None, dist: Distributed, lock) -> FeatureStore:
    """Rank 0 takes the store lock (under torchrun) and creates a missing store (atomically); all ranks
    agree on the outcome, so an error on rank 0 stops every rank; then each opens the store and checks
    provenance."""
    error = None
    if dist.rank == 0:
        try:
            if lock is not None:
                lock.acquire()
            if store_path.is_dir() and not any(store_path.iterdir()):
                store_path.rmdir()  # an empty folder is no store: create it (rank 0 only, under the lock)
            if not store_path.exists():
                _create(store_path, reader, config, catalogue, provenance, fc_state)
        except Exception as err:  # noqa: BLE001 - any failure must reach the other ranks too
            error = err
    dist.agree(error)
    store = FeatureStore.open(store_path, mode="r+")
    store.check_compatible(provenance)
    return store


def _create(store_path: Path, reader: SurveyReader, config: ExtractConfig, catalogue: str | None,
            provenance: dict, fc_state: dict | None) -> None:
    """Rank 0: join the labels and write the new, empty store."""
    targetid = reader.targetids()
    if catalogue:
        labels = join_labels(targetid, catalogue)
        label_z, label_m = labels.redshift, labels.log_mstar
    else:
        logger.warning("no catalogue given: stellar-mass and catalogue-redshift labels will be empty")
        label_z = label_m = np.full(len(targetid), np.nan, np.float32)
    meta = {"targetid": targetid, "split": assign_split(targetid, config.val_fraction),
            "redshift": reader.redshifts(), "label_redshift": label_z, "label_log_mstar": label_m}
    fc = {k: v.numpy() for k, v in fc_state.items()} if fc_state else None
    FeatureStore.create(store_path, meta, provenance, config.rows_per_shard, feature_arrays(config), fc)


def run_extraction(data: str | Path | list, store_path: str | Path, config: ExtractConfig, progress: bool = True) -> dict:
    """Extract features of every pair in ``data`` into the store at ``store_path``; resumable.

    Under torchrun each rank takes the incomplete shards s with s % world_size == rank. ``<store>.lock``
    is held by the single process, or by rank 0 of a torchrun job, so a second extraction of the same
    store (plain or torchrun) refuses instead of writing alongside.
    Returns a summary: pairs, shards written and skipped, seconds, pairs/s.
    """
    from galclip.store.lock import StoreLock

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        lock = StoreLock(store_path)  # rank 0 takes it, after the ranks have met
        try:
            return _run_extraction(data, store_path, config, progress, lock)
        finally:
            lock.release()
    with StoreLock(store_path):
        return _run_extraction(data, store_path, config, progress, None)


def _run_extraction(data: str | Path | list, store_path: str | Path, config: ExtractConfig, progress: bool,
                    lock) -> dict:
    from tqdm import tqdm

    t0 = time.perf_counter()
    reader = SurveyReader(data)
    catalogue = config.catalogue
    if catalogue is None and isinstance(data, (str, Path)) and Path(data).is_dir() and (Path(data) / "provabgs.h5").exists():
        catalogue = str(Path(data) / "provabgs.h5")
        logger.info("using the catalogue found beside the survey: %s", catalogue)
    device = resolve_device(config.device)
    provenance = build_provenance(config, reader, catalogue, device.type)
    dist = Distributed.from_env(device.type)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    store_path = Path(store_path)
    new_store = not store_path.exists() or (store_path.is_dir() and not any(store_path.iterdir()))
    encoders = Encoders(config, device) if new_store else None  # a new store needs the fc MLP
    store = _open_or_create(store_path, reader, config, catalogue, provenance,
                            encoders.fc_state if encoders else None, dist, lock)

    complete = store.complete_mask()
    todo = [s for s in range(store.n_shards) if not complete[s] and s % dist.world == dist.rank]
    if not todo:
        dist.barrier()
        logger.info("%s: all shards of this %s already complete; nothing to do",
                    store_path, "store" if dist.world == 1 else f"rank ({dist.rank}/{dist.world})")
        return {"pairs": store.n, "pairs_extracted": 0, "shards_written": 0, "shards_skipped": int(complete.sum()),
                "seconds": time.perf_counter() - t0, "pairs_per_s": 0.0, "store": str(store_path),
                "already_complete": bool(complete.all()), "rank": dist.rank, "world_size": dist.world}
    for kind in ("image", "spectrum"):
        if provenance["encoders"][kind]["weights"]["source"] == "random" and dist.rank == 0:
            logger.warning("no %s checkpoint given: using seeded RANDOM %s-encoder weights (recorded in the store)", kind, kind)

    encoders = encoders or Encoders(config, device)
    ranges = []
    for shard in todo:
        lo, hi = store.shard_rows(shard)
        ranges += [(shard, a, min(a + config.batch_size, hi)) for a in range(lo, hi, config.batch_size)]
    reader.close()  # forked DataLoader workers must not inherit open HDF5 handles; each opens its own
    workers = config.num_workers if config.num_workers is not None else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
    loader = torch.utils.data.DataLoader(
        RowRanges(reader, ranges), batch_size=None, shuffle=False, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=False,
    )
    n_rows = sum(hi - lo for _, lo, hi in ranges)
    bar = tqdm(total=n_rows, unit="pair", desc=f"extract[{dist.rank}]" if dist.world > 1 else "extract",
               disable=not progress or dist.rank != 0, smoothing=0.1)
    t1 = time.perf_counter()
    pending: dict[str, list[np.ndarray]] = {}
    current = todo[0]
    n_bad = 0

    def flush() -> None:
        codes = np.concatenate(pending.pop("_codes"))
        store.write_shard(current, {k: np.concatenate(v) for k, v in pending.items()}, quarantine=codes)

    for item in loader:
        if item["shard"] != current:
            flush()
            pending, current = {}, item["shard"]
        codes = np.asarray(item["codes"])
        if codes.any():
            bad = np.flatnonzero(codes)
            where = reader.locate(int(item["start"]) + int(bad[0]))
            listing = "; ".join(f"targetid {int(item['targetid'][i])}: {REASONS[int(codes[i])]}" for i in bad[:5])
            if config.bad_rows == "fail":
                raise InputError(
                    f"{where}: {len(bad)} bad input row(s) — {listing}. Fix or drop these rows, or re-run with "
                    "--bad-rows skip to quarantine them (shards already written are kept)"
                )
            logger.warning("%s: quarantining %d bad row(s) — %s", where, len(bad), listing)
            n_bad += len(bad)
        for name, value in encoders(item["image"], item["spectrum"], np.asarray(item["targetid"])).items():
            if codes.any():
                value[codes != 0] = np.nan
            pending.setdefault(name, []).append(value)
        pending.setdefault("_codes", []).append(codes)
        bar.update(len(item["targetid"]))
    flush()
    bar.close()
    reader.close()
    elapsed = time.perf_counter() - t1
    dist.barrier()
    summary = {"pairs": store.n, "pairs_extracted": n_rows, "shards_written": len(todo),
               "shards_skipped": int(complete.sum()), "seconds": time.perf_counter() - t0,
               "pairs_per_s": n_rows / max(elapsed, 1e-9), "device": str(device), "store": str(store_path),
               "rank": dist.rank, "world_size": dist.world, "variants": config.variants, "quarantined": n_bad}
    if device.type == "cuda":
        summary["gpu_max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    logger.info("extracted %d pairs in %.1f s (%.1f pairs/s on %s%s) -> %s", n_rows, elapsed, summary["pairs_per_s"],
                device, f", rank {dist.rank}/{dist.world}" if dist.world > 1 else "", store_path)
    return summary
