"""Stage one: run the frozen encoders once over every pair and stream features into the store.

Work is split into shards of ``rows_per_shard`` rows. A run (or each torchrun rank) takes the
incomplete shards it owns — shard s belongs to rank s mod world_size — reads them through a
DataLoader (each worker with its own HDF5 handles), runs both encoders, and writes each shard
whole, flagging it complete only once it is on disk. Killing a run loses at most the shards in
flight; running the same command again finishes the job with identical arrays.

A resumed run first rebuilds any damaged chunk of what extraction derives from its input files alone (the per-row
metadata, the quarantine codes, the stored projection MLP: ``rebuild_derived``) from those files, without running
an encoder; ``galclip check --repair`` marks the shards of damaged feature chunks incomplete for it to re-extract.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from galclip.config import ExtractConfig
from galclip.data.catalogue import join_labels, no_labels
from galclip.data.sources import SurveySource, open_survey
from galclip.data.survey import recorded_survey_problems, survey_changes
from galclip.errors import InputError
from galclip.extract.backends import resolve_backend
from galclip.extract.distributed import Distributed
from galclip.extract.encoders import Encoders, feature_arrays
from galclip.extract.provenance import build_provenance, extract_command
from galclip.extract.rows import RowRanges, quarantine_codes
from galclip.progress import progress as progress_bar
from galclip.provenance import resolve_device
from galclip.split import assign_split, split_fractions
from galclip.store import FeatureStore
from galclip.store.feature_store import (
    LABEL_PREFIX,
    MOCO_FC,
    QUARANTINE,
    chunk_decodes,
    meta_array_names,
    meta_dtype,
    recorded_backend,
    values_sha256,
)
from galclip.store.quarantine import REASONS

logger = logging.getLogger(__name__)


def _open_or_create(
    store_path: Path,
    reader: SurveySource,
    config: ExtractConfig,
    catalogue: str | None,
    provenance: dict,
    fc_state: dict | None,
    dist: Distributed,
    lock,
) -> tuple[FeatureStore, list]:
    """Rank 0 takes the store lock (under torchrun), creates a missing store (atomically) or opens and checks an
    existing one and rebuilds its damaged derived chunks (``rebuild_derived``); all ranks agree on the outcome, so
    an error on rank 0 stops every rank; then each opens the store and checks provenance. Returns the store and
    the records of the chunks rebuilt."""
    error, store, rebuilt = None, None, []
    if dist.rank == 0:
        try:
            if lock is not None:
                lock.acquire()
            if store_path.is_dir() and not any(store_path.iterdir()):
                store_path.rmdir()  # an empty folder is no store: create it (rank 0 only, under the lock)
            if not store_path.exists():
                _create(store_path, reader, config, catalogue, provenance, fc_state)
            else:
                store = _open_checked(store_path, provenance)
                rebuilt = rebuild_derived(store, reader, config, catalogue)
        except Exception as err:
            error = err
    dist.agree(error)
    return store or _open_checked(store_path, provenance), rebuilt


def _store_backend(store_path: Path) -> str | None:
    """The encoder backend an existing store was extracted with (None when it cannot be read: opening it for
    writing then says why)."""
    try:
        return recorded_backend(FeatureStore.open(store_path, validate=False).provenance)
    except Exception:
        return None


def _open_checked(store_path: Path, provenance: dict) -> FeatureStore:
    """Open the store for writing, refused when this run's settings or survey files differ from its own."""
    store = FeatureStore.open(store_path, mode="r+")
    store.check_compatible(provenance, fix=resume_advice(store, provenance))
    if store.provenance.get("data_content") is not None:  # this run's provenance hashed the files already
        changed = survey_changes(store.provenance["data_content"], provenance["data_content"])
        if changed:
            raise InputError(
                f"{changed[0]}: {store_path} holds features of the earlier file, and this run would add "
                "features of the new one. Put the original back and run the same command, or extract the "
                "new file into a new store ('galclip extract DATA NEW_STORE')"
            )
    return store


def resume_advice(store: FeatureStore, provenance: dict) -> str:
    """What to do when this run's provenance differs from the store's: the exact command that resumes the store
    (it records every argument that decides its bytes), unless the data or the code changed."""
    from galclip.store.feature_store import leaf_diff

    if len((provenance.get("config") or {}).get("modalities") or ("image", "spectrum")) == 1:  # a predict run's
        return (
            f"{store.path} is the work store of a 'galclip predict' run from other input or settings: pass "
            "--work NEW.zarr for this input's features, or another OUT"
        )
    if leaf_diff(store.provenance.get("data"), provenance.get("data"), "data"):
        return (
            f"The survey files differ from those {store.path} was extracted from: point at those files, or extract "
            "these into a new store ('galclip extract DATA NEW_STORE')"
        )
    if "config" not in store.provenance:
        return f"Use another store path; {store.path} records no command line to resume it with"
    done = int(store.complete_mask().sum())
    return (
        f"To resume it ({done} of {store.n_shards} shards done), run exactly:\n  "
        f"{extract_command(store.provenance, store.path)}\nor use another store path for these settings"
    )


def _create(
    store_path: Path,
    reader: SurveySource,
    config: ExtractConfig,
    catalogue: str | None,
    provenance: dict,
    fc_state: dict | None,
) -> None:
    """Rank 0: join the labels and write the new, empty store."""
    if not catalogue and len(config.modalities) == 2:  # galaxies to predict (one modality) need no labels
        logger.warning("no catalogue given: stellar-mass and catalogue-redshift labels will be empty")
    meta = derive_meta(
        reader,
        catalogue,
        config.test_fraction,
        config.selection_fraction,
        custom_labels=config.custom_labels,
        radius_arcsec=config.match_radius_arcsec,
    )
    fc = {k: v.numpy() for k, v in fc_state.items()} if fc_state else None
    FeatureStore.create(store_path, meta, provenance, config.rows_per_shard, feature_arrays(config), fc)


def derive_meta(
    reader: SurveySource,
    catalogue: str | Path | None,
    test_fraction: float,
    selection_fraction: float,
    names: tuple[str, ...] | None = None,
    custom_labels: dict[str, str] | None = None,
    radius_arcsec: float = 1.0,
) -> dict[str, np.ndarray]:
    """The per-row metadata arrays ``names`` (default: every one a new store gets) of a store of the survey ``reader``
    reads, (N,) each in survey order, as its creation writes them: targetid and redshift from the survey, split from
    the targetids (``assign_split``), a ``label_*`` per label joined from ``catalogue`` after its cuts (every PROVABGS
    property it has and ``custom_labels`` {name: column}; NaN where none; redshift and log M* all NaN without a
    catalogue), and RA/Dec where the survey files give them (a galaxy without a TARGETID, a cutout, is joined to the
    catalogue on the sky within ``radius_arcsec``). The one recipe of creation and of ``rebuild_derived``."""
    targetid = reader.targetids()
    ra, dec = reader.positions()
    out = {"targetid": targetid}
    out["split"] = assign_split(targetid, test_fraction, selection_fraction)
    out["redshift"] = reader.redshifts()
    wanted_labels = names is None or any(n.startswith(LABEL_PREFIX) for n in names)
    labels = (
        join_labels(targetid, catalogue, custom_labels, positions=(ra, dec), radius_arcsec=radius_arcsec)
        if catalogue and wanted_labels
        else no_labels(len(targetid))
    )
    out.update({f"{LABEL_PREFIX}{name}": values for name, values in labels.values.items()})
    positions = bool(np.isfinite(ra).any())
    out["ra"], out["dec"] = ra, dec
    if names is None:
        names = meta_array_names(tuple(labels.values), positions)
    missing = [n for n in names if n not in out]
    if missing:
        raise InputError(
            f"{catalogue}: gives no {', '.join(missing)}, which the store holds; pass the catalogue (and --label "
            "options) the store was extracted with"
        )
    return {name: out[name] for name in names}


REBUILD_FIX = "put the original back and run the same command, or restore the store from a copy"


def rebuild_derived(
    store: FeatureStore, reader: SurveySource, config: ExtractConfig, catalogue: str | None
) -> list[dict]:
    """Rebuild every damaged chunk of what extraction derives from its input files alone (``damaged_derived_chunks``:
    per-row metadata from the survey and catalogue, quarantine codes from the survey rows, the stored projection MLP
    from the image checkpoint) from those files; no encoder runs. Each is refused, naming the file and the fix,
    when an input is not there or no longer holds what the store was made from: checked against the survey content
    the store recorded, the SHA-256 of each metadata array's values recorded at creation and its intact chunks, and
    the NaN rows of the shard's features. Returns the records of the chunks rebuilt (empty when none was damaged)."""
    from galclip.store.check import REBUILD, damaged_derived_chunks, describe

    damaged = damaged_derived_chunks(store)
    todo = [d for d in damaged if d["repair"] == REBUILD]
    if len(todo) < len(damaged):  # readers name these; nothing here can redo them
        logger.warning(
            "%s: %d damaged chunk(s) cannot be rebuilt from the input files: %s",
            store.path,
            len(damaged) - len(todo),
            "; ".join(describe(d) for d in damaged if d not in todo),
        )
    if not todo:
        return []
    t0 = time.perf_counter()
    logger.warning(
        "%s: rebuilding %d damaged chunk(s) from the input files, without running an encoder: %s",
        store.path,
        len(todo),
        "; ".join(describe(d) for d in todo[:5]) + ("; ..." if len(todo) > 5 else ""),
    )
    survey = ", ".join(map(str, reader.files))
    if store.provenance.get("data_content") is None:  # else ``_open_checked`` compared the files' content already
        changed = recorded_survey_problems(store.provenance, reader)
        if changed:
            raise InputError(
                f"{changed[0]}: {store.path} was extracted from the earlier file, so its damaged chunk(s) "
                f"cannot be rebuilt from this one; {REBUILD_FIX}"
            )
    names = tuple(n for n in store.meta_arrays if any(d["array"] == n for d in todo))
    if names:
        labels = {n for n in names if n.startswith(LABEL_PREFIX)}
        cat = _rebuild_catalogue(store, catalogue) if labels else None
        values = derive_meta(
            reader,
            cat,
            *split_fractions(store.provenance),
            ("targetid", *names),
            config.custom_labels,
            config.match_radius_arcsec,
        )
        for name in names:
            source = f"{cat} (the catalogue)" if name in labels else survey
            _verify_rebuilt(
                store, name, values[name], {d["shard"] for d in todo if d["array"] == name}, source, values["targetid"]
            )
        for d in (d for d in todo if d["array"] in names):
            lo, hi = store.shard_rows(d["shard"])
            store.rebuild_chunk(d["array"], d["shard"], values[d["array"]][lo:hi])
    for d in (d for d in todo if d["array"] == QUARANTINE):
        lo, hi = store.shard_rows(d["shard"])
        codes = quarantine_codes(reader, lo, hi, config.batch_size)
        _verify_codes(store, d["shard"], codes, survey)
        store.rebuild_chunk(QUARANTINE, d["shard"], codes)
    fc_keys = tuple(d["array"].split("/", 1)[1] for d in todo if d["array"].startswith(f"{MOCO_FC}/"))
    if fc_keys:
        from galclip.extract.image_encoder import load_stein_checkpoint

        # the checkpoint is this run's --image-weights, whose SHA-256 check_compatible found equal to the store's
        _, fc_state = load_stein_checkpoint(config.image_weights)
        store.rebuild_moco_fc({k: v.numpy() for k, v in fc_state.items()}, fc_keys)
    logger.info(
        "%s: rebuilt %d chunk(s) from the input files in %.2f s (no encoder ran)",
        store.path,
        len(todo),
        time.perf_counter() - t0,
    )
    return todo


def _rebuild_catalogue(store: FeatureStore, catalogue: str | None) -> str | None:
    """The catalogue to rebuild the store's labels from: this run's (the same command finds the same one), else the
    one the store recorded; None when the store was made without one (its labels are all NaN)."""
    recorded = store.provenance.get("catalogue")
    if not recorded:
        return None
    path = str(catalogue or recorded)
    if not Path(path).is_file():
        was = "" if str(Path(path).resolve()) == recorded else f" (the store's labels were joined from {recorded})"
        raise InputError(
            f"{path}: the catalogue the labels of {store.path} are rebuilt from is not there{was}, so its "
            "damaged label chunk(s) cannot be rebuilt; put it back and run the same command, or restore "
            "the store from a copy"
        )
    return path


def _verify_rebuilt(
    store: FeatureStore, name: str, values: np.ndarray, damaged: set[int], source: str, targetid: np.ndarray
) -> None:
    """Refuse to rebuild metadata array ``name`` from ``values`` (N,) unless they equal, byte for byte, what the store
    holds in every intact chunk, and hash to the SHA-256 its creation recorded (stores that record one)."""
    values = np.ascontiguousarray(np.asarray(values).astype(meta_dtype(name)))
    width = values.dtype.itemsize
    intact = [s for s in range(store.n_shards) if s not in damaged]
    runs = np.split(np.asarray(intact), np.flatnonzero(np.diff(intact) != 1) + 1) if intact else []
    differ = []
    for run in runs:  # contiguous intact shards in one read each
        lo, hi = store.shard_rows(int(run[0]))[0], store.shard_rows(int(run[-1]))[1]
        stored = np.ascontiguousarray(store.group[name][lo:hi])
        rows = (stored.view(np.uint8).reshape(-1, width) != values[lo:hi].view(np.uint8).reshape(-1, width)).any(1)
        differ += (lo + np.flatnonzero(rows)).tolist()
    if differ:
        row = differ[0]
        stored = store.group[name][row]
        raise InputError(
            f"{source}: '{name}' rebuilt from it differs from what {store.path} holds in its intact "
            f"shards ({len(differ)} row(s), e.g. row {row}, targetid {int(targetid[row])}: stored "
            f"{stored}, rebuilt {values[row]}): it changed since extraction, so the damaged chunk(s) "
            f"cannot be rebuilt from it; {REBUILD_FIX}"
        )
    recorded = store.recorded_values_sha256(name)
    if recorded is not None and values_sha256(values) != recorded:
        raise InputError(
            f"{source}: '{name}' rebuilt from it differs from what {store.path} was created with (the "
            "SHA-256 of its values, recorded at creation): it changed since extraction, so the damaged "
            f"chunk(s) cannot be rebuilt from it; {REBUILD_FIX}"
        )


def _verify_codes(store: FeatureStore, shard: int, codes: np.ndarray, survey: str) -> None:
    """Refuse quarantine codes rebuilt for shard ``shard`` unless exactly their quarantined rows hold all-NaN
    features (what extraction stores for them) in the shard's first feature chunk that decodes."""
    lo, hi = store.shard_rows(shard)
    for name in store.feature_arrays:
        if not chunk_decodes(store.group[name], lo, hi):
            continue  # damaged too: 'galclip check --repair' marks the shard for re-extraction
        nan_rows = np.isnan(store.group[name][lo:hi].reshape(hi - lo, -1)).all(axis=1)
        differ = np.flatnonzero(nan_rows != (codes != 0))
        if differ.size:
            row = lo + int(differ[0])
            now = REASONS.get(int(codes[differ[0]]), "usable") if codes[differ[0]] else "usable"
            raise InputError(
                f"{survey}: the quarantine codes of rows {lo}-{hi - 1} rebuilt from it do not match the "
                f"features {store.path} holds ({differ.size} row(s), e.g. row {row}: now {now}, but its "
                f"stored '{name}' are {'all NaN' if nan_rows[differ[0]] else 'numbers'}): it changed "
                f"since extraction, so the damaged chunk cannot be rebuilt from it; {REBUILD_FIX}"
            )
        return


UNMATCHED_HEADER = "side,targetid,ra,dec,where"


def report_match(reader: SurveySource, store_path: Path) -> dict | None:
    """For images and spectra paired on the sky (:class:`galclip.data.match.MatchedSurvey`): log the matched,
    image-only, spectrum-only and ambiguous counts, write the unmatched galaxies to ``<store>.unmatched.csv`` (side,
    targetid, ra, dec, where), and return the counts with that file's path; None for a survey of pairs."""
    match = getattr(reader, "match", None)
    if match is None:
        return None
    counts = dict(match.counts())
    table = reader.unmatched_table()
    out = Path(f"{store_path}.unmatched.csv")
    if out.exists():
        with open(out, encoding="utf-8", errors="replace") as f:
            if f.readline().strip() != UNMATCHED_HEADER:
                raise InputError(
                    f"{out}: exists and is not galclip's list of unmatched galaxies; move it away, or extract into "
                    "another store path"
                )
    import csv
    import io

    from galclip.atomic import atomic_write_text

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(UNMATCHED_HEADER.split(","))
    for i in range(len(table["targetid"])):
        ra, dec = float(table["ra"][i]), float(table["dec"][i])
        writer.writerow([table["side"][i], int(table["targetid"][i]), f"{ra:.7f}", f"{dec:.7f}", table["where"][i]])
    atomic_write_text(text.getvalue(), out)
    counts["unmatched_file"] = str(out)
    logger.info(
        "sky match within %.2f″: %d matched (%d by TARGETID, %d by position), %d image-only, %d spectrum-only, "
        "%d ambiguous; unmatched galaxies listed in %s",
        reader.radius_arcsec if hasattr(reader, "radius_arcsec") else float("nan"),
        counts.get("matched", 0),
        counts.get("by_targetid", 0),
        counts.get("by_position", 0),
        counts.get("image_only", 0),
        counts.get("spectrum_only", 0),
        counts.get("ambiguous", 0),
        out,
    )
    return counts


def run_extraction(
    data: str | Path | list, store_path: str | Path, config: ExtractConfig, progress: bool = True
) -> dict:
    """Extract features of every pair in ``data`` into the store at ``store_path``; resumable.

    Under torchrun each rank takes the incomplete shards s with s % world_size == rank. ``<store>.lock``
    is held by the single process, or by rank 0 of a torchrun job, so a second extraction of the same
    store (plain or torchrun) refuses instead of writing alongside.
    Returns a summary: pairs, shards written and skipped, seconds, pairs/s.
    """
    from galclip.store.lock import StoreLock

    try:
        reader = open_survey(data, config.modalities, config.match_radius_arcsec)  # refused: no lock, nothing written
    except InputError as err:
        raise InputError(f"{err}{_recorded_files_gone(store_path)}") from err
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


def _recorded_files_gone(store_path: str | Path) -> str:
    """When the store at ``store_path`` exists and survey files it records are not there: a sentence naming them and
    the fix (empty otherwise). Read-only: the store is not locked, nothing is written."""
    try:
        store = FeatureStore.open(store_path, mode="r", validate=False)
        gone = [f for f in store.survey_files() if not Path(f).exists()]
    except Exception:
        return ""
    if not gone:
        return ""
    return (
        f". {store_path} was extracted from {', '.join(gone)}, which {'is' if len(gone) == 1 else 'are'} not "
        "there: put it back where it was and run the same command (the store records where its survey files "
        "are)"
    )


def _extract_with(
    reader: SurveySource, data, store_path: str | Path, config: ExtractConfig, progress: bool, lock
) -> dict:
    t0 = time.perf_counter()
    catalogue = config.catalogue
    pairs = len(config.modalities) == 2  # galaxies to predict (one modality) are extracted without labels
    arguments = [data] if isinstance(data, (str, Path)) else list(data)
    beside = [Path(a) / "provabgs.h5" for a in arguments if Path(a).is_dir() and (Path(a) / "provabgs.h5").exists()]
    if pairs and catalogue is None and beside:
        catalogue = str(beside[0])
        logger.info("using the catalogue found beside the survey: %s", catalogue)
    device = resolve_device(config.device)
    if config.backend is None:  # a store resumes with its own backend; a new one takes the device's default
        recorded = _store_backend(Path(store_path)) if (Path(store_path) / "zarr.json").exists() else None
        config = dataclasses.replace(config, backend=recorded or resolve_backend(None, device.type, config.compile))
    provenance = build_provenance(config, reader, catalogue, device.type, arguments if len(arguments) > 1 else None)
    dist = Distributed.from_env(device.type)
    if device.type == "cuda" and dist.world > 1:
        device = torch.device("cuda", dist.local_rank)
    store_path = Path(store_path)
    new_store = not store_path.exists() or (store_path.is_dir() and not any(store_path.iterdir()))
    encoders = Encoders(config, device) if new_store else None  # a new store needs the fc MLP
    store, rebuilt = _open_or_create(
        store_path, reader, config, catalogue, provenance, encoders.fc_state if encoders else None, dist, lock
    )
    matching = report_match(reader, store_path) if dist.rank == 0 else None

    complete = store.complete_mask()
    todo = [s for s in range(store.n_shards) if not complete[s] and s % dist.world == dist.rank]
    if not todo:
        dist.barrier()
        logger.info(
            "%s: all shards of this %s already complete; nothing to do",
            store_path,
            "store" if dist.world == 1 else f"rank ({dist.rank}/{dist.world})",
        )
        return {
            "pairs": store.n,
            "pairs_extracted": 0,
            "shards_written": 0,
            "shards_skipped": int(complete.sum()),
            "seconds": time.perf_counter() - t0,
            "pairs_per_s": 0.0,
            "store": str(store_path),
            "already_complete": bool(complete.all()),
            "rank": dist.rank,
            "world_size": dist.world,
            "chunks_rebuilt": len(rebuilt),
            "matching": matching,
        }
    for kind in config.modalities:
        if provenance["encoders"][kind]["weights"]["source"] == "random" and dist.rank == 0:
            logger.warning(
                "no %s checkpoint given: using seeded RANDOM %s-encoder weights (recorded in the store)", kind, kind
            )

    encoders = encoders or Encoders(config, device)
    ranges = []
    for shard in todo:
        lo, hi = store.shard_rows(shard)
        ranges += [(shard, a, min(a + config.batch_size, hi)) for a in range(lo, hi, config.batch_size)]
    reader.close()  # forked DataLoader workers must not inherit open HDF5 handles; each opens its own
    workers = (
        config.num_workers
        if config.num_workers is not None
        else (min(8, os.cpu_count() or 1) if device.type == "cuda" else 0)
    )
    loader = torch.utils.data.DataLoader(
        RowRanges(reader, ranges),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    n_rows = sum(hi - lo for _, lo, hi in ranges)
    bar = progress_bar(
        n_rows,
        f"extract[{dist.rank}]" if dist.world > 1 else "extract",
        "pair",
        enabled=progress and dist.rank == 0,
        smoothing=0.1,
    )
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
        features = encoders(item["image"], item["spectrum"], np.asarray(item["targetid"]), item["spectrum_ivar"])
        for name, value in features.items():
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
    summary = {
        "pairs": store.n,
        "pairs_extracted": n_rows,
        "shards_written": len(todo),
        "shards_skipped": int(complete.sum()),
        "seconds": time.perf_counter() - t0,
        "pairs_per_s": n_rows / max(elapsed, 1e-9),
        "device": str(device),
        "backend": encoders.backend,
        "store": str(store_path),
        "rank": dist.rank,
        "world_size": dist.world,
        "variants": config.variants,
        "quarantined": n_bad,
        "chunks_rebuilt": len(rebuilt),
        "matching": matching,
    }
    if device.type == "cuda":
        summary["gpu_max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    unit = "pairs" if len(config.modalities) == 2 else f"{config.modalities[0]}s"
    logger.info(
        "extracted %d %s in %.1f s (%.1f %s/s on %s, %s encoders%s) -> %s",
        n_rows,
        unit,
        elapsed,
        summary["pairs_per_s"],
        unit,
        device,
        encoders.backend,
        f", rank {dist.rank}/{dist.world}" if dist.world > 1 else "",
        store_path,
    )
    return summary
