"""``galclip predict``: a zero-shot redshift and stellar-mass catalogue for galaxies with one modality.

1. The frozen encoder of that modality runs over the input survey files, with the weights and
   preprocessing of the store behind the index (checked through provenance), into a
   single-modality feature store: extract's own machinery, so batches, atomic shards, resume
   after kill -9 and torchrun ranks come with it. A feature store as input skips this step.
2. The index's heads embed the features (the function and blocks the index was built with), and the
   zero-shot predictor (:mod:`galclip.index.zero_shot`, the one the page and ``search --json`` show)
   gives each galaxy's estimates from its k nearest labelled reference galaxies (the index's
   training split by default; a galaxy that is one of them is left out of its own neighbours), with
   the neighbours' weighted 16th and 84th percentiles as the interval.
3. The catalogue is streamed to a temporary file and renamed into place; with ``truth`` the
   photo-z measures, two plots and a report page are written beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from galclip.atomic import atomic_path, write_json
from galclip.config import ExtractConfig
from galclip.errors import InputError
from galclip.index.embed import BLOCK, embed_store
from galclip.index.zero_shot import Reference, load_reference
from galclip.outputs import check_output_dir, default_report_dir, output_dir
from galclip.predict.catalogue import CatalogueWriter, catalogue_columns, check_output, empty_rows, format_for
from galclip.predict.truth import TruthAccumulator, load_truth
from galclip.progress import progress as progress_bar
from galclip.provenance import sha256_file
from galclip.split import TEST
from galclip.store import FeatureStore
from galclip.store.identity import encoder_differences
from galclip.vocabulary import MODALITIES, label_info

logger = logging.getLogger(__name__)

# what a predict report folder may hold: the demo keeps the catalogue and its work store there too
PREDICT_NAMES = (
    "metrics.json",
    "report.html",
    "*.png",
    "*.fits",
    "*.csv",
    "*.ecsv",
    "*.parquet",
    "*.csv.json",
    "*.parquet.json",
    "*.zarr",
    "*.zarr.lock",
)


def default_work_store(out: Path) -> Path:
    """Where the input's features are extracted: beside the catalogue, ``<stem>.features.zarr``."""
    return out.with_name(out.stem + ".features.zarr")


def _is_store(path: Path) -> bool:
    return (Path(path) / "zarr.json").exists()


def choose_modality(held: tuple[str, ...], requested: str, where: str) -> str:
    """The modality to predict from: ``requested``, or with "auto" the one the input holds (image when both)."""
    if requested == "auto":
        if not held:
            raise InputError(
                f"{where}: holds neither images nor spectra (image_features/spectrum_features); nothing to predict from"
            )
        if len(held) > 1:
            logger.info(
                "%s holds both modalities: predicting from the images (--modality spectrum for the spectra)", where
            )
        return "image" if "image" in held else held[0]
    if requested not in MODALITIES:
        raise InputError(f"--modality must be image, spectrum or auto, got {requested!r}")
    if requested not in held:
        plural = {"image": "images", "spectrum": "spectra"}
        raise InputError(
            f"{where}: holds no {plural[requested]} (only {[plural[m] for m in held]}); pass --modality "
            f"{held[0] if held else 'auto'} or another input"
        )
    return requested


def check_same_encoder(reference: dict, other: dict, modality: str, what: str, behind: str) -> None:
    """Refuse features made otherwise than the reference store's: name each differing field."""
    diffs = encoder_differences(reference, other, modality)
    if diffs:
        raise InputError(
            f"{what}: its {modality} features would not come from the encoder behind {behind}:\n  "
            + "\n  ".join(
                d.replace("store has", "index's store has").replace("this run has", "this input has") for d in diffs
            )
            + f"\nPredict with the weights and preprocessing the index was built from (--{modality}-weights PATH to "
            "point at a moved checkpoint)"
        )


def extraction_config(reference: FeatureStore, modality: str, weights: str | None, **overrides) -> ExtractConfig:
    """The reference store's extraction settings for one modality, without augmented views; ``weights`` replaces
    the recorded checkpoint path (checked by SHA-256 before anything runs)."""
    from galclip.extract.provenance import config_from_provenance

    config = config_from_provenance(
        reference.provenance, variants=0, spectrum_variants=0, modalities=(modality,), catalogue=None, **overrides
    )
    key = f"{modality}_weights"
    path = weights or getattr(config, key)
    if path is not None and not Path(path).exists():
        raise InputError(
            f"{path}: the {modality} weights the index's store {reference.path} was extracted with are "
            f"not here; pass --{modality}-weights PATH (checked against their SHA-256)"
        )
    return dataclasses.replace(config, **{key: path})


def _planned_provenance(config: ExtractConfig, reader) -> dict:
    """The provenance the extraction of ``config`` will record (the weights hashed now, before anything runs)."""
    from galclip.extract.provenance import build_provenance

    return build_provenance(config, reader, None)


def predict_catalogue(
    index_dir: str | Path,
    input_path: str | Path,
    out: str | Path,
    modality: str = "auto",
    k: int = 16,
    fmt: str | None = None,
    truth: str | Path | None = None,
    reference: str = "train",
    work: str | Path | None = None,
    report_dir: str | Path | None = None,
    image_weights: str | None = None,
    spectrum_weights: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    rows_per_shard: int = 256,
    num_workers: int | None = None,
    bad_rows: str = "fail",
    backend: str | None = None,
    block: int = BLOCK,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Write the zero-shot catalogue of every galaxy in ``input_path`` (survey files, or a feature store) to ``out``.

    ``backend``: how the encoders run (``galclip.extract.backends``; None: fused, or a work store's own).
    Returns the run's metrics, also written to ``report_dir/metrics.json`` (default ``<stem>_report/``).
    Under torchrun every rank extracts its shards; rank 0 alone writes the catalogue."""
    from galclip.extract.run import run_extraction
    from galclip.heads.checkpoint import load_heads
    from galclip.index.search import open_index

    t0 = time.perf_counter()
    out = Path(out)
    if fmt == "hats":  # a folder of HEALPix-partitioned Parquet (the optional extra galclip[hats])
        from galclip.predict.hats_catalogue import check_hats_output

        check_hats_output(out, overwrite)
    else:
        fmt = format_for(out, fmt)
        check_output(out, overwrite, fmt)
    metrics_dir = Path(report_dir) if report_dir is not None else default_report_dir(out)
    check_output_dir(metrics_dir, "predict", PREDICT_NAMES, overwrite, option="--report")
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    index = open_index(index_dir, verify_hashes=True)  # a catalogue outlives the run: check every file's SHA-256
    heads_file = index.check_heads()
    ref_store = index.open_store()
    input_path = Path(input_path)
    timings: dict[str, float] = {}
    extraction = None

    # every check runs before anything is written: input, encoder, truth, reference set, k
    config = None
    if _is_store(input_path):
        store = FeatureStore.open(input_path)
        held = tuple(m for m in MODALITIES if f"{m}_features" in store.feature_arrays)
        modality = choose_modality(held, modality, str(input_path))
        check_same_encoder(ref_store.provenance, store.provenance, modality, str(input_path), str(index_dir))
        targetid = store.targetids()
        positions = store.positions()
    else:
        from galclip.data.sources import open_survey

        with closing(open_survey(input_path, require=())) as reader:
            modality = choose_modality(reader.modalities, modality, str(input_path))
            config = extraction_config(
                ref_store,
                modality,
                image_weights if modality == "image" else spectrum_weights,
                device=device,
                batch_size=batch_size,
                rows_per_shard=rows_per_shard,
                num_workers=num_workers,
                bad_rows=bad_rows,
                backend=backend,  # None: fused (within the tolerance of the reference store's backend)
            )
            check_same_encoder(
                ref_store.provenance, _planned_provenance(config, reader), modality, str(input_path), str(index_dir)
            )
            targetid = reader.targetids()
            positions = reader.positions()
    if fmt == "hats" and (positions is None or not np.isfinite(np.concatenate(positions)).all()):
        raise InputError(
            f"{input_path}: --format hats partitions the catalogue on the sky, so it needs RA and Dec for every "
            "galaxy, and these files give none for some; write another format (--format fits, csv, ecsv or parquet)"
        )
    truth_labels, n_seen = None, 0
    if truth is not None:  # galaxies that fitted or chose the heads are not scored: only new ones and the test split
        truth_labels = load_truth(truth, targetid, index.label_names, positions)
        seen = np.isin(targetid, index.rows["targetid"][index.rows["split"] != TEST])
        n_seen = int(seen.sum())
        for y in truth_labels.values():
            y[seen] = np.nan
    ref = load_reference(index, modality, reference, seed)
    n_in_reference = int((ref.holds(targetid) >= 0).sum())
    if k + (n_in_reference > 0) > len(ref):
        most = len(ref) - (n_in_reference > 0)
        raise InputError(
            f"-k {k} is larger than the {most} labelled reference galaxies of {index_dir} "
            f"({ref.selection} selection{', less the query itself' if n_in_reference else ''}); choose "
            f"-k {most} or fewer"
        )
    if n_in_reference:
        logger.info(
            "%d of the galaxies predicted are reference galaxies: each is left out of its own neighbours",
            n_in_reference,
        )

    if config is not None:
        work = Path(work) if work is not None else default_work_store(out)
        t = time.perf_counter()
        extraction = run_extraction(input_path, work, config, progress=progress)
        timings["extract"] = time.perf_counter() - t
        if extraction.get("rank", 0) != 0:
            return {"rank": extraction["rank"], "extraction": extraction}
        store = FeatureStore.open(work)
    readable = store.require_complete()
    heads, _ = load_heads(heads_file, ref_store)
    header = _header(index, heads_file, ref_store, store, modality, k, ref)
    positions = store.positions()  # of the galaxies whose features are read: the input's, or the work store's
    columns = catalogue_columns(tuple(ref.labels), positions is not None)

    t = time.perf_counter()
    accumulate = TruthAccumulator(truth_labels) if truth_labels is not None else None
    n_ood = n_pred = 0
    predictions = _predictions(store, heads, ref, modality, k, readable, block, accumulate, columns, positions)
    if fmt == "hats":
        from galclip.predict.hats_catalogue import write_hats

        parts = []
        with progress_bar(store.n, "predict", "galaxy", enabled=progress) as bar:
            for _, rows in predictions:
                parts.append(rows)
                bar.update(len(rows))
        rows = np.concatenate(parts)
        n_ood, n_pred = int(rows["OOD"].sum()), int((rows["N_NEIGHBOURS"] > 0).sum())
        write_hats({name: rows[name] for name in rows.dtype.names}, out, out.name, header, overwrite=overwrite)
    else:
        with atomic_path(out) as tmp:
            writer = CatalogueWriter(tmp, fmt, store.n, header, final=out, columns=columns)
            try:
                with progress_bar(store.n, "predict", "galaxy", enabled=progress) as bar:
                    for _, rows in predictions:
                        writer.write(rows)
                        n_ood += int(rows["OOD"].sum())
                        n_pred += int((rows["N_NEIGHBOURS"] > 0).sum())
                        bar.update(len(rows))
                writer.close()
            except BaseException:
                writer.abort()
                raise
    timings["embed_knn"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    metrics = {
        "catalogue": str(out),
        "format": fmt,
        "modality": modality,
        "k": k,
        "n_galaxies": store.n,
        "n_predicted": n_pred,
        "n_quarantined": store.n - int(readable.sum()),
        "n_ood": n_ood,
        "ood_threshold": ref.ood_threshold,
        "labels": list(ref.labels),
        "interval_calibration": {
            "method": "split-conformal stretch of the neighbours' 16-84 interval about its centre",
            "calibrated_on": f"{ref.n_calibration(k)} galaxies: the index's labelled selection split, and its "
            "reference galaxies each left out of its own neighbours (never test)",
            "stretch": ref.stretch(k),
        },
        "reference": {
            "selection": ref.selection,
            "n": len(ref),
            "n_in_reference": n_in_reference,
            "index": str(Path(index_dir).resolve()),
        },
        "input": str(input_path),
        "features": str(store.path),
        "header": header,
        "timings_s": timings,
        "galaxies_per_s": store.n / max(timings["total"], 1e-9),
        "extraction": extraction,
    }
    if accumulate is not None:
        from galclip.predict.report import write_truth_report

        metrics["truth"] = {
            "source": str(truth),
            "scored": "galaxies outside the index's store and those of its test split",
            "n_left_out_seen_in_training": n_seen,
            **accumulate.metrics(),
        }
    with output_dir(metrics_dir, "predict", PREDICT_NAMES, overwrite=True, option="--report"):
        if accumulate is not None:
            metrics["figures"] = write_truth_report(metrics, accumulate, metrics_dir)
        write_json(metrics, metrics_dir / "metrics.json")
    metrics["metrics_file"] = str(metrics_dir / "metrics.json")
    logger.info(
        "catalogue of %d galaxies (%d predicted, %d flagged out of distribution) -> %s", store.n, n_pred, n_ood, out
    )
    return metrics


def _predictions(
    store: FeatureStore,
    heads,
    ref: Reference,
    modality: str,
    k: int,
    readable: np.ndarray,
    block: int,
    accumulate,
    columns,
    positions: tuple[np.ndarray, np.ndarray] | None,
):
    """Yield (first row, catalogue rows with ``columns``) in store order: the zero-shot predictions of the readable
    rows, embedded ``block`` rows at a time as the index was (``embed_store``), and NaN rows for quarantined inputs;
    ``positions``: the store's (ra, dec), or None. Memory: one block of features and its neighbours."""
    targetid = store.targetids()
    rows = np.flatnonzero(readable)
    done = 0

    def start(lo: int, hi: int) -> np.ndarray:
        out = empty_rows(hi - lo, columns)
        out["TARGETID"] = targetid[lo:hi]
        if positions is not None:
            out["RA"], out["DEC"] = positions[0][lo:hi], positions[1][lo:hi]
        return out

    for lo, z in embed_store(store, heads, rows, block, (modality,)):
        sel = rows[lo : lo + len(z[modality])]
        end = int(sel[-1]) + 1
        out = start(done, end)
        pred = ref.predict(z[modality], k, targetid[sel])
        at = sel - done
        for label, values in pred.labels.items():
            prefix = label_info(label)[1]
            for col, value in zip((f"{prefix}_PRED", f"{prefix}_LO", f"{prefix}_HI"), values):
                out[col][at] = value
        out["SIM_TOP1"][at] = pred.similarity
        out["N_NEIGHBOURS"][at] = k
        out["OOD"][at] = pred.ood
        if accumulate is not None:
            accumulate.add(sel, pred)
        yield done, out
        done = end
    for lo in range(done, store.n, block):  # quarantined rows after the last readable one
        yield lo, start(lo, min(lo + block, store.n))


def _header(
    index, heads_file: Path, ref_store: FeatureStore, store: FeatureStore, modality: str, k: int, ref: Reference
) -> dict[str, object]:
    """The catalogue's provenance: FITS keywords (8 characters at most) -> values."""
    from galclip.provenance import code_version

    return {
        "GCVERS": str(code_version())[:60],
        "MODALITY": modality,
        "KNN_K": k,
        "KNN_WGT": "inverse distance",
        "INTERVAL": "16th-84th percentile, conformal on selection",
        "REFSET": ref.selection,
        "NREF": len(ref),
        "OODTHR": float(ref.ood_threshold),
        "OODPCT": 1.0,
        "INDEXSHA": sha256_file(Path(index.path) / "index.json")[:16],
        "HEADSSHA": index.sidecar["heads_sha256"][:16],
        "STOREFP": ref_store.fingerprint(),
        "INPUTFP": store.fingerprint(),
    }
