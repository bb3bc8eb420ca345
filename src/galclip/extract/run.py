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
from pathlib import Path

import numpy as np
import torch

from galclip.config import ExtractConfig
from galclip.data.catalogue import join_labels
from galclip.split import assign_split
from galclip.data.survey import SurveyReader, survey_changes
from galclip.errors import InputError
from galclip.extract.distributed import Distributed
from galclip.extract.encoders import Encoders, feature_arrays
from galclip.extract.provenance import build_provenance, extract_command
from galclip.extract.rows import RowRanges
from galclip.progress import progress as progress_bar
from galclip.provenance import resolve_device
from galclip.store import FeatureStore
from galclip.store.quarantine import REASONS

logger = logging.getLogger(__name__)

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
    store.check_compatible(provenance, fix=resume_advice(store, provenance))
    if store.provenance.get("data_content") is not None:  # this run's provenance hashed the files already
        changed = survey_changes(store.provenance["data_content"], provenance["data_content"])
        if changed:
            raise InputError(f"{changed[0]}: {store_path} holds features of the earlier file, and this run would add "
                             "features of the new one. Put the original back and run the same command, or extract the "
                             "new file into a new store ('galclip extract DATA NEW_STORE')")
    return store


def resume_advice(store: FeatureStore, provenance: dict) -> str:
    """What to do when this run's provenance differs from the store's: the exact command that resumes the store
    (it records every argument that decides its bytes), unless the data or the code changed."""
    from galclip.store.feature_store import leaf_diff

    if len((provenance.get("config") or {}).get("modalities") or ("image", "spectrum")) == 1:  # a predict run's
        return (f"{store.path} is the work store of a 'galclip predict' run from other input or settings: pass "
                "--work NEW.zarr for this input's features, or another OUT")
    if leaf_diff(store.provenance.get("data"), provenance.get("data"), "data"):
        return (f"The survey files differ from those {store.path} was extracted from: point at those files, or extract "
                "these into a new store ('galclip extract DATA NEW_STORE')")
    if "config" not in store.provenance:
        return f"Use another store path; {store.path} records no command line to resume it with"
    done = int(store.complete_mask().sum())
    return (f"To resume it ({done} of {store.n_shards} shards done), run exactly:\n  "
            f"{extract_command(store.provenance, store.path)}\nor use another store path for these settings")


def _create(store_path: Path, reader: SurveyReader, config: ExtractConfig, catalogue: str | None,
            provenance: dict, fc_state: dict | None) -> None:
    """Rank 0: join the labels and write the new, empty store."""
    targetid = reader.targetids()
    if catalogue:
        labels = join_labels(targetid, catalogue)
        label_z, label_m = labels.redshift, labels.log_mstar
    else:
        if len(config.modalities) == 2:  # galaxies to predict (one modality) need no labels
            logger.warning("no catalogue given: stellar-mass and catalogue-redshift labels will be empty")
        label_z = label_m = np.full(len(targetid), np.nan, np.float32)
    meta = {"targetid": targetid, "split": assign_split(targetid, config.test_fraction, config.selection_fraction),
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

    reader = SurveyReader(data, require=config.modalities)  # refused input or device: no lock, nothing written
    try:
        resolve_device(config.device)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            lock = StoreLock(store_path)  # rank 0 takes it, after the ranks have met
            try:
                return _extract_with(reader, data, store_path, config, progress, lock)
            finally:
                lock.release()
        with StoreLock(store_path):
            return _extract_with(reader, data, store_path, config, progress, None)
    finally:
        reader.close()  # a refused or failed run holds no HDF5 handle (HDF5 shares one open file per process)


def _extract_with(reader: SurveyReader, data, store_path: str | Path, config: ExtractConfig, progress: bool,
                  lock) -> dict:
    t0 = time.perf_counter()
    catalogue = config.catalogue
    pairs = len(config.modalities) == 2  # galaxies to predict (one modality) are extracted without labels
    if pairs and catalogue is None and isinstance(data, (str, Path)) and Path(data).is_dir() and (Path(data) / "provabgs.h5").exists():
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
    for kind in config.modalities:
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
    bar = progress_bar(n_rows, f"extract[{dist.rank}]" if dist.world > 1 else "extract", "pair",
                       enabled=progress and dist.rank == 0, smoothing=0.1)
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
    unit = "pairs" if len(config.modalities) == 2 else f"{config.modalities[0]}s"
    logger.info("extracted %d %s in %.1f s (%.1f %s/s on %s%s) -> %s", n_rows, unit, elapsed, summary["pairs_per_s"],
                unit, device, f", rank {dist.rank}/{dist.world}" if dist.world > 1 else "", store_path)
    return summary
