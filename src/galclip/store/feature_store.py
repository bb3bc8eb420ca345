"""The Zarr v3 feature store: layout, provenance, shard-by-shard resumable writes.

Layout (one Zarr group)::

    targetid          (N,)        int64    survey order
    split             (N,)        uint8    0 train, 1 test, 2 selection (hash of targetid; galclip.split)
    redshift          (N,)        float32  survey (DESI) redshift
    label_redshift    (N,)        float32  catalogue Z_HP after cuts, NaN if none
    label_log_mstar   (N,)        float32  catalogue PROVABGS_LOGMSTAR_BF after cuts, NaN if none
    image_features    (N, 2048)   float32  frozen ResNet-50 pooled features
    spectrum_features (N, 256)    float32  frozen Spender attention features
    image_features_aug    (N, K, 2048)   features of K augmented views (only when K > 0)
    spectrum_features_aug (N, Ks, 256)   features of Ks noise re-draws (only when Ks > 0)
    quarantine        (N,)        uint8    0 good; else why the row was skipped (--bad-rows skip)
    shard_complete    (S,)        uint8    1 once shard s is written and flushed to disk
    moco_fc/{0.weight,0.bias,2.weight,2.bias}  the Stein checkpoint's projection MLP, when given

Rows are grouped in shards of ``rows_per_shard`` rows; a shard is exactly one chunk of every
per-row array, so a writer that owns a shard owns whole chunks and never shares one with
another writer. A shard is flagged complete only after its chunk files are fsync'ed.
The group attribute ``galclip`` holds the format version, sizes and provenance.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galclip.atomic import fsync_path, remove_stale_temporaries, temporary_name
from galclip.errors import StoreError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META_ARRAYS = ("targetid", "split", "redshift", "label_redshift", "label_log_mstar")
BASE_FEATURES = {"image_features": (2048,), "spectrum_features": (256,)}
COMPLETE = "shard_complete"
QUARANTINE = "quarantine"
MOCO_FC = "moco_fc"
# provenance fields that must agree before an extraction may resume into an existing store
COMPAT_KEYS = ("encoders", "preprocessing", "data", "rows_per_shard")


@dataclass(frozen=True)
class StoreInfo:
    """What a store holds, read from metadata only."""

    path: str
    n: int
    n_train: int
    n_selection: int
    n_test: int
    n_labelled: int
    rows_per_shard: int
    n_shards: int
    n_complete: int
    arrays: dict[str, tuple[tuple[int, ...], str]]
    provenance: dict
    fingerprint: str

    @property
    def complete(self) -> bool:
        return self.n_complete == self.n_shards


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder, and the folder holding ``path``."""
    if not path.exists():
        return
    if path.is_file():
        fsync_path(path)
    else:
        for root, _, files in os.walk(path):
            for name in files:
                fsync_path(os.path.join(root, name))
            fsync_path(root)
    fsync_path(path.parent)


def leaf_diff(old, new, prefix: str = "") -> list[str]:
    """Paths and values where two JSON-like trees differ, e.g. 'encoders.image.weights.sha256: a -> b'."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += leaf_diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
        return [f"{prefix}: store has {json.dumps(old)[:120]}, this run has {json.dumps(new)[:120]}"]
    return []


def _with_defaults(provenance: dict) -> dict:
    """Provenance with the fields later galclip versions added, filled with what older ones did: image
    orientation "survey" (galclip 0.1/0.2 fed the cutout's own (C, H, W))."""
    image = (provenance.get("preprocessing") or {}).get("image")
    if isinstance(image, dict) and "orientation" not in image:
        image["orientation"] = "survey"
    return provenance


class FeatureStore:
    """A feature store on local disk. Create with ``create``, open with ``open``."""

    def __init__(self, path: Path, group, mode: str):
        self.path = path
        self.group = group
        self.mode = mode
        meta = dict(group.attrs.get("galclip", {}))
        if meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: not a galclip feature store (format {meta.get('format_version')!r})")
        self.n: int = int(meta["n"])
        self.rows_per_shard: int = int(meta["rows_per_shard"])
        self.n_shards: int = int(meta["n_shards"])
        self._recorded_provenance: dict = meta["provenance"]  # as written: the fingerprint hashes it
        self.provenance: dict = _with_defaults(copy.deepcopy(meta["provenance"]))
        self.feature_arrays: dict[str, tuple[int, ...]] = {
            k: tuple(v) for k, v in meta.get("feature_arrays", BASE_FEATURES).items()}

    # ---- creation / opening -------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, meta: dict[str, np.ndarray], provenance: dict, rows_per_shard: int = 256,
        feature_arrays: dict[str, tuple[int, ...]] | None = None, moco_fc: dict[str, np.ndarray] | None = None,
    ) -> "FeatureStore":
        """Write a new empty store atomically (built under a temporary name, then renamed).

        ``feature_arrays`` maps each per-row feature array to its shape after the row axis
        (default: the two base arrays); ``moco_fc`` holds the image checkpoint's fc MLP.
        """
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: already exists; open it to resume, or remove it to start again")
        path.parent.mkdir(parents=True, exist_ok=True)
        n = len(meta["targetid"])
        n_shards = max(1, -(-n // rows_per_shard))
        remove_stale_temporaries(path)
        tmp = temporary_name(path)
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            cls._write_empty(tmp, meta, provenance, rows_per_shard, n, n_shards, feature_arrays, moco_fc)
            _fsync_tree(tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():  # a failure half-way leaves no temporary folder behind
                shutil.rmtree(tmp, ignore_errors=True)
        fsync_path(path.parent)
        return cls.open(path, mode="r+")

    @staticmethod
    def _write_empty(tmp: Path, meta: dict[str, np.ndarray], provenance: dict, rows_per_shard: int, n: int,
                     n_shards: int, feature_arrays: dict | None, moco_fc: dict | None) -> None:
        import zarr

        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        dtypes = {"targetid": "int64", "split": "uint8"}
        for name in META_ARRAYS:
            arr = group.create_array(name, shape=(n,), chunks=(rows_per_shard,), dtype=dtypes.get(name, "float32"),
                                     fill_value=0 if name in dtypes else np.nan)
            arr[:] = np.asarray(meta[name]).astype(dtypes.get(name, "float32"))
        feature_arrays = dict(feature_arrays or BASE_FEATURES)
        for name, tail in feature_arrays.items():
            group.create_array(name, shape=(n, *tail), chunks=(rows_per_shard, *tail), dtype="float32", fill_value=np.nan)
        group.create_array(COMPLETE, shape=(n_shards,), chunks=(1,), dtype="uint8", fill_value=0)
        group.create_array(QUARANTINE, shape=(n,), chunks=(rows_per_shard,), dtype="uint8", fill_value=0)
        if moco_fc:
            fc = group.create_group(MOCO_FC)
            for key, value in moco_fc.items():
                fc.create_array(key, shape=value.shape, dtype="float32")[...] = np.asarray(value, np.float32)
        group.attrs["galclip"] = {
            "format_version": FORMAT_VERSION, "n": n, "rows_per_shard": rows_per_shard, "n_shards": n_shards,
            "feature_arrays": {k: list(v) for k, v in feature_arrays.items()}, "provenance": provenance,
        }

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", validate: bool = True) -> "FeatureStore":
        """Open a store; with ``validate`` refuse one whose arrays are missing (``galclip check`` opens
        without, to list every problem)."""
        import zarr

        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: no feature store here; run 'galclip extract DATA {path}' first")
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception as err:  # noqa: BLE001 - unreadable metadata is a damaged store, whatever zarr raises
            raise StoreError(f"{path}: unreadable store metadata ({err}); re-extract into a new store") from err
        store = cls(path, group, mode)
        missing = store.missing_arrays()
        if validate and missing:
            raise StoreError(f"{path}: damaged store, array(s) {missing} are missing; 'galclip check {path}' lists "
                             "every problem. It cannot be repaired in place: extract again into a new store")
        return store

    def missing_arrays(self) -> list[str]:
        """Names of the arrays every store has (metadata, features, completion flags) that are absent."""
        return [name for name in (*META_ARRAYS, *self.feature_arrays, COMPLETE) if name not in self.group]

    # ---- metadata ---------------------------------------------------------------
    def complete_mask(self) -> np.ndarray:
        """(S,) bool: which shards are written and flushed."""
        return self.group[COMPLETE][:].astype(bool)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        lo = shard * self.rows_per_shard
        return lo, min(lo + self.rows_per_shard, self.n)

    def read_meta(self, name: str) -> np.ndarray:
        """One per-row metadata array (N,): targetid, split, redshift, label_redshift or label_log_mstar."""
        if name not in META_ARRAYS:
            raise KeyError(f"{name!r} is not a per-row metadata array; choose from {META_ARRAYS}")
        return self.group[name][:]

    def targetids(self) -> np.ndarray:
        """(N,) int64 targetids in store order."""
        return self.read_meta("targetid")

    def split(self) -> np.ndarray:
        """(N,) uint8: 0 train, 1 test, 2 selection, computed from the targetids (a pure function of each), so a
        store written before the selection split existed (codes 0/1) gets it without re-extraction."""
        from galclip.split import assign_split, split_fractions

        return assign_split(self.targetids(), *split_fractions(self.provenance))

    def labels(self) -> dict[str, np.ndarray]:
        """Catalogue labels, (N,) float32 each, NaN where a galaxy has none: {"redshift", "log_mstar"}."""
        return {"redshift": self.read_meta("label_redshift"), "log_mstar": self.read_meta("label_log_mstar")}

    def survey_files(self) -> list[str]:
        """The survey files the store was extracted from, as its provenance records them (may be empty)."""
        return list((self.provenance.get("data") or {}).get("files", []))

    def image_display(self) -> tuple[int, str]:
        """(centre crop in pixels, grz->RGB mapping) of the store's image preprocessing: how its galaxies
        are drawn. Defaults (96, "lupton") where the provenance records none."""
        pre = (self.provenance.get("preprocessing") or {}).get("image", {})
        return int(pre.get("centre_crop", 96)), pre.get("rgb", "lupton")

    def fingerprint(self) -> str:
        """Identity of the store's content: provenance and targetids (16 hex digits)."""
        h = hashlib.sha256(json.dumps({k: self._recorded_provenance.get(k) for k in COMPAT_KEYS}, sort_keys=True).encode())
        h.update(np.ascontiguousarray(self.group["targetid"][:]).tobytes())
        return h.hexdigest()[:16]

    def info(self) -> StoreInfo:
        split = self.split()
        labelled = np.isfinite(self.group["label_redshift"][:]) & np.isfinite(self.group["label_log_mstar"][:])
        arrays = {name: (tuple(self.group[name].shape), str(self.group[name].dtype))
                  for name in (*META_ARRAYS, *self.feature_arrays, COMPLETE) if name in self.group}
        return StoreInfo(
            path=str(self.path), n=self.n, n_train=int((split == 0).sum()),
            n_selection=int((split == 2).sum()), n_test=int((split == 1).sum()),
            n_labelled=int(labelled.sum()), rows_per_shard=self.rows_per_shard, n_shards=self.n_shards,
            n_complete=int(self.complete_mask().sum()), arrays=arrays, provenance=self.provenance,
            fingerprint=self.fingerprint(),
        )

    def check_compatible(self, provenance: dict) -> None:
        """Refuse to resume with other encoders, preprocessing or data: name the difference."""
        diffs = []
        for key in COMPAT_KEYS:
            diffs += leaf_diff(self.provenance.get(key), provenance.get(key), key)
        if diffs:
            raise StoreError(
                f"{self.path}: was made with different settings, so its features cannot be mixed with this run's:\n  "
                + "\n  ".join(diffs) + "\nUse another store path, or delete this store to start over."
            )

    # ---- writing -------------------------------------------------------------
    def write_shard(self, shard: int, features: dict[str, np.ndarray], quarantine: np.ndarray | None = None) -> None:
        """Write every feature array of one shard (and its rows' quarantine codes), flush, then flag it complete."""
        lo, hi = self.shard_rows(shard)
        if quarantine is not None and QUARANTINE in self.group:
            self.group[QUARANTINE][lo:hi] = np.asarray(quarantine, np.uint8)
            _fsync_tree(self.path / QUARANTINE / "c" / str(shard))
        for name, tail in self.feature_arrays.items():
            data = np.asarray(features[name], np.float32)
            if data.shape != (hi - lo, *tail):
                raise ValueError(f"{name} for shard {shard} has shape {data.shape}, expected {(hi - lo, *tail)}")
            self.group[name][lo:hi] = data
            _fsync_tree(self.path / name / "c" / str(shard))
        self.group[COMPLETE][shard] = 1
        _fsync_tree(self.path / COMPLETE / "c" / str(shard))

    # ---- reading --------------------------------------------------------------
    def quarantine(self) -> np.ndarray:
        """(N,) uint8: 0 for usable rows, else the reason code of a skipped bad input row."""
        return self.group[QUARANTINE][:] if QUARANTINE in self.group else np.zeros(self.n, np.uint8)

    def require_complete(self, allow_partial: bool = False) -> np.ndarray:
        """(N,) bool rows readable: in complete shards and not quarantined.

        Raises unless every shard is complete or ``allow_partial``.
        """
        mask = self.complete_mask()
        if not mask.all() and not allow_partial:
            raise StoreError(
                f"{self.path}: only {int(mask.sum())} of {self.n_shards} shards are complete; finish it with "
                "'galclip extract' (same arguments), or pass --allow-partial to use the complete part"
            )
        rows = np.repeat(mask, self.rows_per_shard)[: self.n]
        quarantined = self.quarantine() != 0
        if (rows & quarantined).any():
            logger.info("%s: leaving out %d quarantined row(s)", self.path, int((rows & quarantined).sum()))
        return rows & ~quarantined

    def iter_shards(self, names: tuple[str, ...], rows: np.ndarray | None = None):
        """Stream feature or metadata arrays shard by shard: yield (lo, keep, arrays) per complete shard that
        holds a wanted row, where ``keep`` (hi - lo,) bool marks the wanted rows of [lo, hi) and ``arrays``
        maps each name to its block of the kept rows. ``rows`` (N,) bool picks rows (default: every readable
        row, ``require_complete(allow_partial=True)``). Memory: one shard of each array at a time."""
        unknown = [n for n in names if n not in self.feature_arrays and n not in META_ARRAYS]
        if unknown:
            raise StoreError(f"{self.path}: no array {unknown}; it holds {sorted(self.feature_arrays)}")
        wanted = self.require_complete(allow_partial=True) if rows is None else np.asarray(rows, bool)
        complete = self.complete_mask()
        for shard in np.flatnonzero(complete):  # never decode chunks of shards still being written
            lo, hi = self.shard_rows(int(shard))
            keep = wanted[lo:hi]
            if keep.any():
                yield lo, keep, {name: self.group[name][lo:hi][keep] for name in names}

    def read_rows(self, rows: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Arrays ``names`` at the store rows ``rows`` (m,) sorted, unique, in complete shards: name -> (m, ...).
        Read shard by shard, so memory holds the result and one shard."""
        mask = np.zeros(self.n, bool)
        mask[rows] = True
        if not self.complete_mask()[np.asarray(rows) // self.rows_per_shard].all():
            raise StoreError(f"{self.path}: some of the requested rows are in incomplete shards")
        out = {name: np.empty((len(rows), *self.group[name].shape[1:]), self.group[name].dtype) for name in names}
        at = 0
        for _, keep, arrays in self.iter_shards(names, mask):
            n = int(keep.sum())
            for name, block in arrays.items():
                out[name][at:at + n] = block
            at += n
        return out

    def load(self, allow_partial: bool = False, features: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Per-row arrays of the readable rows, in memory: name -> (n_rows, ...).

        ``features`` picks feature arrays (default: the two base arrays); metadata always comes.
        """
        rows = self.require_complete(allow_partial)
        names = tuple(BASE_FEATURES) if features is None else features
        unknown = [f for f in names if f not in self.feature_arrays]
        if unknown:
            raise StoreError(f"{self.path}: no feature array {unknown}; it holds {sorted(self.feature_arrays)}")
        return self.read_rows(np.flatnonzero(rows), (*META_ARRAYS, *names))

    def moco_fc(self) -> dict[str, np.ndarray] | None:
        """The image checkpoint's projection MLP (keys 0.weight, 0.bias, 2.weight, 2.bias), if stored."""
        if MOCO_FC not in self.group:
            return None
        fc = self.group[MOCO_FC]
        return {key: fc[key][...] for key in ("0.weight", "0.bias", "2.weight", "2.bias")}
