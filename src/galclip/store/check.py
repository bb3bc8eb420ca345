"""Verify a feature store: metadata, layout, completeness, every chunk's checksum, finite values, unique targetids;
and mark the shards of damaged chunks incomplete so that the same extraction re-extracts them (``--repair``)."""

from __future__ import annotations

import numpy as np

from galclip.store.feature_store import (
    COMPAT_KEYS,
    COMPLETE,
    META_ARRAYS,
    MOCO_FC,
    MOCO_FC_KEYS,
    QUARANTINE,
    FeatureStore,
    _decodes,
)
from galclip.store.quarantine import REASONS

def _damaged_chunks(store: FeatureStore, complete: np.ndarray, targetid: np.ndarray | None) -> list[dict]:
    """Every chunk that is missing (from a complete shard of a format-2 store) or fails to decode, one record each:
    {"array", "shard", "rows": [lo, hi - 1], "targetids": [min, max] or None, "why", "repairable"}. Streams one
    chunk at a time."""
    g = store.group
    found = []
    per_row = [name for name in (*META_ARRAYS, *store.feature_arrays, QUARANTINE) if name in g]
    for name in per_row:
        is_meta = name in META_ARRAYS
        for shard in range(store.n_shards):
            lo, hi = store.shard_rows(shard)
            why = None
            must_exist = store.format_version >= 2 and (is_meta or complete[shard])
            if must_exist and not store.chunk_file(name, shard).exists():
                why = "chunk file missing"
            elif (is_meta or complete[shard]) and not _decodes(g[name], lo, hi):
                why = "fails its checksum or does not decode"
            if why:
                ids = [int(targetid[lo:hi].min()), int(targetid[lo:hi].max())] if targetid is not None else None
                found.append({"array": name, "shard": shard, "rows": [lo, hi - 1], "targetids": ids, "why": why,
                              "repairable": not is_meta})
    if MOCO_FC in g:  # the image checkpoint's projection MLP: written once, at creation
        for key in MOCO_FC_KEYS:
            why = None
            if key not in g[MOCO_FC]:
                why = "array missing"
            elif store.format_version >= 2 and not store.chunk_file(f"{MOCO_FC}/{key}", 0).exists():
                why = "chunk file missing"
            elif not _decodes(g[MOCO_FC][key], 0, g[MOCO_FC][key].shape[0]):
                why = "fails its checksum or does not decode"
            if why:
                found.append({"array": f"{MOCO_FC}/{key}", "shard": None, "rows": None, "targetids": None,
                              "why": why, "repairable": False})
    n_flags = g[COMPLETE].shape[0] if COMPLETE in g else 0
    for shard in range(n_flags):
        if not _decodes(g[COMPLETE], shard, shard + 1):
            lo, hi = store.shard_rows(shard)
            found.append({"array": COMPLETE, "shard": shard, "rows": [lo, hi - 1], "targetids": None,
                          "why": "fails its checksum or does not decode", "repairable": True})
    return found


def describe(record: dict) -> str:
    if record["shard"] is None:
        return f"array '{record['array']}': {record['why']}"
    ids = f", targetids {record['targetids'][0]}..{record['targetids'][1]}" if record["targetids"] else ""
    return (f"array '{record['array']}', shard {record['shard']} (rows {record['rows'][0]}-{record['rows'][1]}{ids}): "
            f"{record['why']}")


def check_store(store: FeatureStore) -> dict:
    """Read the whole store chunk by chunk; returns {"ok": bool, "problems": [str], "damaged": [records],
    "checksums": bool, "n": ..., ...}. Never raises on damage: every finding is a problem."""
    g = store.group
    base = {"n": store.n, "n_shards": store.n_shards, "checksums": store.format_version >= 2,
            "format_version": store.format_version}
    problems = list(store.metadata_problems())
    try:
        missing_arrays = [] if problems else store.missing_arrays()
    except Exception as err:  # noqa: BLE001 - a format-1 store's array metadata that does not parse
        problems.append(f"{store.path}: array metadata unreadable ({type(err).__name__}: {err})")
    if problems:
        return {"ok": False, "problems": problems + ["the store's metadata is damaged: restore the store from a copy, "
                                                     "or extract again into a new store"],
                "damaged": [], "quarantine": [], "n_complete": 0, "fingerprint": None, "arrays": [], **base}
    problems += [f"array '{name}' is missing" for name in missing_arrays]
    for name in (*META_ARRAYS, *store.feature_arrays):
        tail = store.feature_arrays.get(name, ())
        if name in g and tuple(g[name].shape) != (store.n, *tail):
            problems.append(f"array '{name}' has shape {tuple(g[name].shape)}, expected {(store.n, *tail)}")
    if missing_arrays or problems:  # nothing below can be trusted without intact metadata
        return {"ok": False, "problems": problems + ["the store cannot be used: extract again into a new store"],
                "damaged": [], "quarantine": [], "n_complete": 0, "fingerprint": None,
                "arrays": sorted(a for a in store.feature_arrays if a in g), **base}
    missing = [k for k in COMPAT_KEYS if k not in store.provenance]
    if missing:
        problems.append(f"provenance lacks {missing}")
    complete = np.zeros(store.n_shards, bool)
    for shard in range(store.n_shards):  # flag by flag, so one damaged flag does not hide the others
        if _decodes(g[COMPLETE], shard, shard + 1):
            complete[shard] = bool(g[COMPLETE][shard])
    targetid = g["targetid"][:] if _decodes(g["targetid"], 0, store.n) else None
    damaged = _damaged_chunks(store, complete, targetid)
    problems += [f"DAMAGED {describe(d)}" for d in damaged]
    if not complete.all():
        problems.append(f"{int((~complete).sum())} of {store.n_shards} shards are incomplete, e.g. shard(s) "
                        f"{np.flatnonzero(~complete)[:5].tolist()}: re-run the same 'galclip extract' to finish")
    bad_chunks = {(d["array"], d["shard"]) for d in damaged}
    if targetid is not None:
        uniq, counts = np.unique(targetid, return_counts=True)
        if (counts > 1).any():
            problems.append(f"{int((counts > 1).sum())} duplicate targetid(s), e.g. {uniq[counts > 1][:5].tolist()}")
    if _decodes(g["split"], 0, store.n):
        split = g["split"][:]
        if not np.isin(split, (0, 1, 2)).all():
            problems.append("split holds values other than 0 (train), 1 (test) and 2 (selection)")
    quarantine = []
    codes = g[QUARANTINE][:] if QUARANTINE in g and _decodes(g[QUARANTINE], 0, store.n) else np.zeros(store.n, np.uint8)
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
        quarantine = [{"targetid": int(targetid[i]), "reason": REASONS.get(int(c), str(int(c)))}
                      for i, c in zip(q_rows, codes[q_rows])]
    return {"ok": not problems, "problems": problems, "damaged": damaged, "quarantine": quarantine,
            "n_complete": int(complete.sum()), "arrays": sorted(store.feature_arrays),
            "fingerprint": store.fingerprint() if targetid is not None else None, **base}


def repair_store(store: FeatureStore, damaged: list[dict]) -> dict:
    """Mark the shards of damaged per-row chunks (and damaged completion flags) incomplete, so the same
    ``galclip extract`` re-extracts exactly those shards. Returns {"shards": [...], "unrepairable": [records]}."""
    shards = sorted({d["shard"] for d in damaged if d["repairable"]})
    unrepairable = [d for d in damaged if not d["repairable"]]
    for shard in shards:
        store.mark_incomplete(shard)
    return {"shards": shards, "unrepairable": unrepairable}
