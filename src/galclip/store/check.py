"""Verify a feature store: metadata, layout, completeness, every chunk's checksum, finite values, unique targetids;
and repair it (``--repair``): mark the shards of damaged feature chunks incomplete, so that the same extraction
re-extracts them, and list the damaged chunks of what extraction derives from its input files alone (per-row
metadata, quarantine codes, the stored projection MLP), which that extraction rebuilds from those files (see
``damaged_derived_chunks``) without running an encoder."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from galclip.split import SPLIT_NAMES
from galclip.store.feature_store import (
    COMPAT_KEYS,
    COMPLETE,
    MOCO_FC,
    MOCO_FC_KEYS,
    QUARANTINE,
    FeatureStore,
    chunk_decodes,
)
from galclip.store.quarantine import REASONS

logger = logging.getLogger(__name__)

# how a damaged chunk is repaired (a record's "repair"): its shard re-extracted (check --repair marks it incomplete),
# or rebuilt from the input files by the next 'galclip extract' (no encoder runs); None: it cannot be, in place
REEXTRACT, REBUILD = "re-extract", "rebuild"


def _complete_flags(store: FeatureStore) -> np.ndarray:
    """(S,) bool completion flags read flag by flag, so one damaged flag (read as incomplete) hides no other."""
    g = store.group
    complete = np.zeros(store.n_shards, bool)
    for shard in range(store.n_shards):
        if chunk_decodes(g[COMPLETE], shard, shard + 1):
            complete[shard] = bool(g[COMPLETE][shard])
    return complete


def image_checkpoint(store: FeatureStore) -> dict:
    """The image weights record of the store's provenance: {"source": path, "sha256": hex} for a checkpoint."""
    return ((store.provenance.get("encoders") or {}).get("image") or {}).get("weights") or {}


def _damaged_chunks(
    store: FeatureStore, complete: np.ndarray, targetid: np.ndarray | None, derived_only: bool = False
) -> list[dict]:
    """Every chunk that is missing (from a complete shard of a format-2 store) or fails to decode, one record each:
    {"array", "shard", "rows": [lo, hi - 1], "targetids": [min, max] or None, "why", "repairable", "repair"
    (``REEXTRACT``, ``REBUILD`` or None)}. Streams one chunk at a time; an intact array of ``DERIVED_ARRAYS`` (small)
    is read whole, once. ``derived_only``: only what extraction rebuilds from its input files."""
    g = store.group
    found = []
    names = store.derived_arrays if derived_only else (*store.meta_arrays, *store.feature_arrays, QUARANTINE)
    for name in (name for name in names if name in g):
        shards = range(store.n_shards) if name in store.meta_arrays else np.flatnonzero(complete).tolist()
        missing = {s for s in shards if store.format_version >= 2 and not store.chunk_file(name, s).exists()}
        if not missing and name in store.derived_arrays and chunk_decodes(g[name], 0, store.n):
            continue  # every chunk there and decoding: no need to look chunk by chunk
        for shard in shards:
            lo, hi = store.shard_rows(shard)
            why = None
            if shard in missing:
                why = "chunk file missing"
            elif not chunk_decodes(g[name], lo, hi):
                why = "fails its checksum or does not decode"
            if why:
                ids = [int(targetid[lo:hi].min()), int(targetid[lo:hi].max())] if targetid is not None else None
                found.append(
                    {
                        "array": name,
                        "shard": shard,
                        "rows": [lo, hi - 1],
                        "targetids": ids,
                        "why": why,
                        "repairable": True,
                        "repair": REBUILD if name in store.derived_arrays else REEXTRACT,
                    }
                )
    if MOCO_FC in g:  # the image checkpoint's projection MLP, copied from the checkpoint at creation
        from_checkpoint = bool(image_checkpoint(store).get("sha256"))
        for key in MOCO_FC_KEYS:
            why = None
            if key not in g[MOCO_FC]:
                why = "array missing"
            elif store.format_version >= 2 and not all(f.exists() for f in store.chunk_files(f"{MOCO_FC}/{key}")):
                why = "chunk file missing"
            elif not chunk_decodes(g[MOCO_FC][key], 0, g[MOCO_FC][key].shape[0]):
                why = "fails its checksum or does not decode"
            if why:
                rebuild = from_checkpoint and why != "array missing"
                found.append(
                    {
                        "array": f"{MOCO_FC}/{key}",
                        "shard": None,
                        "rows": None,
                        "targetids": None,
                        "why": why,
                        "repairable": rebuild,
                        "repair": REBUILD if rebuild else None,
                    }
                )
    n_flags = g[COMPLETE].shape[0] if COMPLETE in g and not derived_only else 0
    for shard in range(n_flags):
        if not chunk_decodes(g[COMPLETE], shard, shard + 1):
            lo, hi = store.shard_rows(shard)
            found.append(
                {
                    "array": COMPLETE,
                    "shard": shard,
                    "rows": [lo, hi - 1],
                    "targetids": None,
                    "why": "fails its checksum or does not decode",
                    "repairable": True,
                    "repair": REEXTRACT,
                }
            )
    return found


def damaged_derived_chunks(store: FeatureStore) -> list[dict]:
    """The damaged chunks (records as ``check_store``'s "damaged") of what extraction derives from its input files
    alone: every per-row metadata chunk, the quarantine chunk of every complete shard, the stored projection MLP.
    Cheap (about 22 bytes a row, and the MLP, are read): a resumed extraction looks at them every time."""
    g = store.group
    targetid = g["targetid"][:] if "targetid" in g and chunk_decodes(g["targetid"], 0, store.n) else None
    return _damaged_chunks(store, _complete_flags(store), targetid, derived_only=True)


def describe(record: dict) -> str:
    if record["shard"] is None:
        return f"array '{record['array']}': {record['why']}"
    ids = f", targetids {record['targetids'][0]}..{record['targetids'][1]}" if record["targetids"] else ""
    return (
        f"array '{record['array']}', shard {record['shard']} (rows {record['rows'][0]}-{record['rows'][1]}{ids}): "
        f"{record['why']}"
    )


def check_store(store: FeatureStore) -> dict:
    """Read the whole store chunk by chunk; returns {"ok": bool, "problems": [str], "damaged": [records],
    "checksums": bool, "n": ..., ...}. Never raises on damage: every finding is a problem."""
    g = store.group
    base = {
        "n": store.n,
        "n_shards": store.n_shards,
        "checksums": store.format_version >= 2,
        "format_version": store.format_version,
    }
    problems = list(store.metadata_problems())
    try:
        missing_arrays = [] if problems else store.missing_arrays()
    except Exception as err:
        problems.append(f"{store.path}: array metadata unreadable ({type(err).__name__}: {err})")
    if problems:
        return {
            "ok": False,
            "problems": problems
            + ["the store's metadata is damaged: restore the store from a copy, or extract again into a new store"],
            "damaged": [],
            "quarantine": [],
            "n_complete": 0,
            "fingerprint": None,
            "arrays": [],
            **base,
        }
    problems += [f"array '{name}' is missing" for name in missing_arrays]
    for name in (*store.meta_arrays, *store.feature_arrays):
        tail = store.feature_arrays.get(name, ())
        if name in g and tuple(g[name].shape) != (store.n, *tail):
            problems.append(f"array '{name}' has shape {tuple(g[name].shape)}, expected {(store.n, *tail)}")
    if missing_arrays or problems:  # nothing below can be trusted without intact metadata
        return {
            "ok": False,
            "problems": problems + ["the store cannot be used: extract again into a new store"],
            "damaged": [],
            "quarantine": [],
            "n_complete": 0,
            "fingerprint": None,
            "arrays": sorted(a for a in store.feature_arrays if a in g),
            **base,
        }
    missing = [k for k in COMPAT_KEYS if k not in store.provenance]
    if missing:
        problems.append(f"provenance lacks {missing}")
    complete = _complete_flags(store)
    targetid = g["targetid"][:] if chunk_decodes(g["targetid"], 0, store.n) else None
    damaged = _damaged_chunks(store, complete, targetid)
    problems += [f"DAMAGED {describe(d)}" for d in damaged]
    if not complete.all():
        problems.append(
            f"{int((~complete).sum())} of {store.n_shards} shards are incomplete, e.g. shard(s) "
            f"{np.flatnonzero(~complete)[:5].tolist()}: re-run the same 'galclip extract' to finish"
        )
    bad_chunks = {(d["array"], d["shard"]) for d in damaged}
    if targetid is not None:
        uniq, counts = np.unique(targetid, return_counts=True)
        if (counts > 1).any():
            problems.append(f"{int((counts > 1).sum())} duplicate targetid(s), e.g. {uniq[counts > 1][:5].tolist()}")
    if chunk_decodes(g["split"], 0, store.n):
        split = g["split"][:]
        if not np.isin(split, list(SPLIT_NAMES)).all():
            problems.append("split holds values other than 0 (train), 1 (test) and 2 (selection)")
    quarantine = []
    readable = QUARANTINE in g and chunk_decodes(g[QUARANTINE], 0, store.n)
    codes = g[QUARANTINE][:] if readable else np.zeros(store.n, np.uint8)
    if targetid is not None:
        bad_rows: dict[str, list[int]] = {}
        for shard in np.flatnonzero(complete):
            lo, hi = store.shard_rows(int(shard))
            for name in store.feature_arrays:
                if (name, int(shard)) in bad_chunks:
                    continue
                block = g[name][lo:hi].reshape(hi - lo, -1)
                bad = np.flatnonzero(~np.isfinite(block).all(axis=1) & (codes[lo:hi] == 0))
                if bad.size:
                    bad_rows.setdefault(name, []).extend(targetid[lo + bad].tolist())
        for name, ids in bad_rows.items():
            problems.append(f"'{name}': {len(ids)} row(s) with NaN/inf in complete shards, e.g. targetid {ids[:5]}")
        q_rows = np.flatnonzero(codes != 0)
        quarantine = [
            {"targetid": int(targetid[i]), "reason": REASONS.get(int(c), str(int(c)))}
            for i, c in zip(q_rows, codes[q_rows])
        ]
    return {
        "ok": not problems,
        "problems": problems,
        "damaged": damaged,
        "quarantine": quarantine,
        "n_complete": int(complete.sum()),
        "arrays": sorted(store.feature_arrays),
        "fingerprint": store.fingerprint() if targetid is not None else None,
        **base,
    }


def rebuild_inputs(store: FeatureStore, records: list[dict]) -> tuple[list[tuple[str, str]], list[str]]:
    """The input files the next 'galclip extract' rebuilds the damaged chunks ``records`` from, as (what, path)
    pairs ("survey file", "catalogue", "image checkpoint"), and one line for each that is not there (the image
    checkpoint also when its SHA-256 differs from the one recorded). Only existence is checked here: the extraction
    checks the files' content before it rebuilds anything."""
    from galclip.provenance import sha256_file

    arrays = {d["array"] for d in records}
    inputs: list[tuple[str, str]] = []
    if arrays & set(store.derived_arrays):
        inputs += [("survey file", f) for f in store.survey_files()]
    catalogue = store.provenance.get("catalogue")
    if catalogue and any(a.startswith("label_") for a in arrays):
        inputs.append(("catalogue", str(catalogue)))
    checkpoint = image_checkpoint(store)
    if any(a.startswith(f"{MOCO_FC}/") for a in arrays) and checkpoint.get("sha256"):
        inputs.append(("image checkpoint", str(checkpoint.get("source"))))
    problems = []
    for what, path in inputs:
        if not Path(path).is_file():
            problems.append(f"{path}: the {what} it is rebuilt from is not there")
        elif what == "image checkpoint" and sha256_file(path) != checkpoint["sha256"]:
            problems.append(f"{path}: the {what} differs from the one the store was extracted with (SHA-256)")
    return inputs, problems


def repair_store(store: FeatureStore, damaged: list[dict]) -> dict:
    """Repair in place what can be: mark the shards of damaged feature chunks (and damaged completion flags)
    incomplete, so the same ``galclip extract`` re-extracts exactly those shards. The damaged chunks of what
    extraction derives from its input files alone are left for that extraction, which finds them itself and rebuilds
    them from those files without running an encoder ("rebuild"; a quarantine chunk of a shard re-extracted anyway
    is left out), once the files are there ("inputs", "missing_inputs"). The stored projection MLP is rebuildable
    only while the image checkpoint it was copied from is there, unchanged; else it is "unrepairable", with the
    reason in its "why". Returns {"shards", "rebuild", "inputs", "missing_inputs", "unrepairable"}."""
    shards = sorted({d["shard"] for d in damaged if d.get("repair") == REEXTRACT})
    rebuild = [
        d for d in damaged if d.get("repair") == REBUILD and not (d["array"] == QUARANTINE and d["shard"] in shards)
    ]
    unrepairable = [d for d in damaged if d.get("repair") is None]
    for shard in shards:
        store.mark_incomplete(shard)
    inputs, missing = rebuild_inputs(store, rebuild)
    lost_checkpoint = [m for m in missing if "image checkpoint" in m]
    if lost_checkpoint:  # nothing else holds the projection MLP: it cannot be rebuilt
        fc = [d for d in rebuild if d["array"].startswith(f"{MOCO_FC}/")]
        rebuild = [d for d in rebuild if d not in fc]
        unrepairable += [
            {
                **d,
                "repairable": False,
                "repair": None,
                "why": f"{d['why']}; {lost_checkpoint[0]}",
                "input_missing": True,
            }
            for d in fc
        ]
        missing = [m for m in missing if m not in lost_checkpoint]
        inputs = [(what, path) for what, path in inputs if what != "image checkpoint"]
    if rebuild:
        logger.info(
            "%s: %d damaged chunk(s) left for the next 'galclip extract' to rebuild from the input files",
            store.path,
            len(rebuild),
        )
    return {
        "shards": shards,
        "rebuild": rebuild,
        "inputs": inputs,
        "missing_inputs": missing,
        "unrepairable": unrepairable,
    }
