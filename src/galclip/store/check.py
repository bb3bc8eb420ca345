"""Validate a feature store: layout, completeness, provenance, finite values, unique targetids."""

from __future__ import annotations

import numpy as np

from galclip.store.feature_store import COMPAT_KEYS, COMPLETE, META_ARRAYS, FeatureStore
from galclip.store.quarantine import REASONS


def check_store(store: FeatureStore) -> dict:
    """Read the store shard by shard; returns {"ok": bool, "problems": [str], "n": ..., ...}."""
    g = store.group
    missing_arrays = store.missing_arrays()
    problems = [f"array '{name}' is missing" for name in missing_arrays]
    for name in (*META_ARRAYS, *store.feature_arrays):
        tail = store.feature_arrays.get(name, ())
        if name in g and tuple(g[name].shape) != (store.n, *tail):
            problems.append(f"array '{name}' has shape {tuple(g[name].shape)}, expected {(store.n, *tail)}")
    if missing_arrays:  # nothing below can be read without them
        return {"ok": False, "problems": problems + ["the store cannot be used: extract again into a new store"],
                "quarantine": [], "n": store.n, "n_shards": store.n_shards,
                "n_complete": int(store.complete_mask().sum()) if COMPLETE in g else 0,
                "arrays": sorted(a for a in store.feature_arrays if a in g), "fingerprint": None}
    missing = [k for k in COMPAT_KEYS if k not in store.provenance]
    if missing:
        problems.append(f"provenance lacks {missing}")
    complete = store.complete_mask()
    if not complete.all():
        problems.append(f"{int((~complete).sum())} of {store.n_shards} shards are incomplete, e.g. shard(s) "
                        f"{np.flatnonzero(~complete)[:5].tolist()}: re-run the same 'galclip extract' to finish")
    targetid = g["targetid"][:]
    uniq, counts = np.unique(targetid, return_counts=True)
    if (counts > 1).any():
        problems.append(f"{int((counts > 1).sum())} duplicate targetid(s), e.g. {uniq[counts > 1][:5].tolist()}")
    split = g["split"][:]
    if not np.isin(split, (0, 1, 2)).all():
        problems.append("split holds values other than 0 (train), 1 (test) and 2 (selection)")
    bad_rows: dict[str, list[int]] = {}
    codes = store.quarantine()
    quarantined = codes != 0
    for shard in np.flatnonzero(complete):
        lo, hi = store.shard_rows(int(shard))
        for name in store.feature_arrays:
            block = g[name][lo:hi].reshape(hi - lo, -1)
            bad = np.flatnonzero(~np.isfinite(block).all(axis=1) & ~quarantined[lo:hi])
            if bad.size:
                bad_rows.setdefault(name, []).extend(targetid[lo + bad].tolist())
    for name, ids in bad_rows.items():
        problems.append(f"'{name}': {len(ids)} row(s) with NaN/inf in complete shards, e.g. targetid {ids[:5]}")
    q_rows = np.flatnonzero(quarantined)
    quarantine = [{"targetid": int(targetid[i]), "reason": REASONS.get(int(c), str(int(c)))}
                  for i, c in zip(q_rows, codes[q_rows])]
    return {"ok": not problems, "problems": problems, "quarantine": quarantine, "n": store.n, "n_shards": store.n_shards,
            "n_complete": int(complete.sum()), "arrays": sorted(store.feature_arrays), "fingerprint": store.fingerprint()}
