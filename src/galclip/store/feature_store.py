"""The Zarr v3 feature store: layout, provenance, shard-by-shard resumable writes.

Layout (one Zarr group)::

    targetid          (N,)        int64    survey order
    split             (N,)        uint8    0 train, 1 test, 2 selection (hash of targetid; galclip.split)
    redshift          (N,)        float32  survey (DESI) redshift
    label_redshift    (N,)        float32  catalogue Z_HP after cuts, NaN if none
    label_log_mstar   (N,)        float32  catalogue PROVABGS_LOGMSTAR_BF after cuts, NaN if none
    label_<name>      (N,)        float32  every other label (the PROVABGS properties, --label), NaN if none
    ra, dec           (N,)        float64  sky position in degrees where the survey files give one, else NaN
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
The group attribute ``galclip`` holds the format version, sizes and provenance, and ``meta_arrays``, the per-row
metadata arrays the store holds (stores written before the PROVABGS properties hold ``META_ARRAYS``, no ``ra``/``dec``).

Integrity (format 2): every chunk is Zstd-compressed and then carries a CRC-32C (Zarr v3's
``crc32c`` codec), so any flipped bit in a chunk fails to decode instead of decoding into other
numbers; the group attribute ``galclip_sha256`` is the SHA-256 of the ``galclip`` attribute and
``galclip.metadata_sha256`` holds the SHA-256 of every array's ``zarr.json``, checked whenever the
store is opened. Format 1 stores (no checksums) stay readable; ``galclip check`` says so.

Repair: a damaged feature chunk (or completion flag) is re-extracted (``galclip check --repair`` marks its shard
incomplete). What extraction derives from its input files alone (``DERIVED_ARRAYS``: the per-row metadata, written
at creation, and the quarantine codes of the input rows) is rebuilt from those files by the next ``galclip extract``
of the store, without running an encoder; ``galclip.values_sha256`` (the SHA-256 of each metadata array's values,
recorded at creation) proves a rebuilt array identical to the one written, and the stored Stein projection MLP is
copied again from its checkpoint (whose SHA-256 the provenance records).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from galclip.atomic import atomic_dir, fsync_path, naming_os_errors, temporary_name
from galclip.errors import DamagedDataError, StoreError
from galclip.provenance import canonical_sha256, sha256_file
from galclip.split import SELECTION, TEST, TRAIN

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: CRC-32C on every chunk, SHA-256 of the metadata
READABLE_FORMATS = (1, 2)
META_ARRAYS = ("targetid", "split", "redshift", "label_redshift", "label_log_mstar")  # what every store holds
POSITION_ARRAYS = ("ra", "dec")
LABEL_PREFIX = "label_"
META_DTYPES = {
    "targetid": "int64",
    "split": "uint8",
    "redshift": "float32",
    "label_redshift": "float32",
    "label_log_mstar": "float32",
    "ra": "float64",
    "dec": "float64",
}


def meta_dtype(name: str) -> str:
    """The dtype of per-row metadata array ``name`` (every ``label_*`` is float32)."""
    return META_DTYPES.get(name, "float32" if name.startswith(LABEL_PREFIX) else "")


def meta_array_names(labels: tuple[str, ...] | list[str], positions: bool) -> tuple[str, ...]:
    """The metadata arrays of a store holding ``labels`` (redshift and log_mstar first, always) and, with
    ``positions``, RA/Dec."""
    extra = [f"{LABEL_PREFIX}{name}" for name in labels if f"{LABEL_PREFIX}{name}" not in META_ARRAYS]
    return (*META_ARRAYS, *extra, *(POSITION_ARRAYS if positions else ()))


BASE_FEATURES = {"image_features": (2048,), "spectrum_features": (256,)}
COMPLETE = "shard_complete"
QUARANTINE = "quarantine"
MOCO_FC = "moco_fc"
MOCO_FC_KEYS = ("0.weight", "0.bias", "2.weight", "2.bias")
# what extraction derives from its input files alone (no encoder): the next 'galclip extract' rebuilds a damaged chunk
# (a store's own list adds its extra labels and positions: FeatureStore.derived_arrays)
DERIVED_ARRAYS = (*META_ARRAYS, QUARANTINE)
# provenance fields that must agree before an extraction may resume into an existing store
COMPAT_KEYS = ("encoders", "preprocessing", "data", "rows_per_shard")
UNRECORDED_BACKEND = "eager"  # the encoder backend of stores made before preprocessing.compute.backend was recorded


def recorded_backend(provenance: dict) -> str:
    """The encoder backend (``galclip.extract.backends``) a store's features came from."""
    compute = (provenance.get("preprocessing") or {}).get("compute") or {}
    return compute.get("backend", UNRECORDED_BACKEND)


def _with_backend(provenance: dict) -> dict:
    """``provenance`` with its backend recorded, so an older store compares equal to an eager run."""
    preprocessing = dict(provenance.get("preprocessing") or {})
    preprocessing["compute"] = {**(preprocessing.get("compute") or {}), "backend": recorded_backend(provenance)}
    return {**provenance, "preprocessing": preprocessing}


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


def sorted_json(value) -> str:
    """``value`` as JSON with sorted keys and json's default separators (", ", ": "): what ``fingerprint`` hashes.
    Not ``provenance.canonical_sha256``'s compact form: every existing store's fingerprint depends on these bytes."""
    return json.dumps(value, sort_keys=True)


def values_sha256(values: np.ndarray) -> str:
    """Hex SHA-256 of an array's values: its C-order bytes in its own dtype."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def leaf_diff(old, new, prefix: str = "") -> list[str]:
    """Paths and values where two JSON-like trees differ, e.g. 'encoders.image.weights.sha256: a -> b'."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += leaf_diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    if sorted_json(old) != sorted_json(new):
        return [f"{prefix}: store has {json.dumps(old)[:120]}, this run has {json.dumps(new)[:120]}"]
    return []


def _codecs() -> list:
    """Bytes-to-bytes codecs of every array galclip writes: Zstd (level 0, Zarr's default), then a CRC-32C."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0), Crc32cCodec()]


def metadata_problems(path: Path, meta: dict, recorded: str | None) -> list[str]:
    """What differs from the metadata a format-2 store was written with: the ``galclip`` attribute against its
    SHA-256, and every array's zarr.json against the SHA-256 recorded at creation (empty when intact)."""
    if recorded is None or canonical_sha256(meta) != recorded:
        return [f"{path}/zarr.json: the store's attributes do not match their SHA-256 (damaged)"]
    problems = []
    for rel, digest in (meta.get("metadata_sha256") or {}).items():
        file = path / rel
        if not file.exists():
            problems.append(f"{file}: array metadata is missing")
        elif sha256_file(file) != digest:
            problems.append(f"{file}: array metadata does not match its SHA-256 (damaged)")
    return problems


METADATA_FIX = (
    "the store's metadata cannot be trusted: restore the store from a copy, or extract again into a new "
    "store ('galclip check' lists what is damaged)"
)


def _verify_metadata(path: Path, meta: dict, recorded: str | None) -> None:
    """Refuse a format-2 store whose metadata differs from what was written (see ``metadata_problems``)."""
    problems = metadata_problems(path, meta, recorded)
    if problems:
        raise DamagedDataError(f"{problems[0]}; {METADATA_FIX}")


def _with_defaults(provenance: dict) -> dict:
    """Provenance with the fields later galclip versions added, filled with what older ones did: image
    orientation "survey" (galclip 0.1/0.2 fed the cutout's own (C, H, W))."""
    image = (provenance.get("preprocessing") or {}).get("image")
    if isinstance(image, dict) and "orientation" not in image:
        image["orientation"] = "survey"
    return provenance


class FeatureStore:
    """A feature store on local disk. Create with ``create``, open with ``open``."""

    def __init__(self, path: Path, group, mode: str, verify: bool = True):
        self.path = path
        self.group = group
        self.mode = mode
        meta = group.attrs.get("galclip", {})
        meta = dict(meta) if isinstance(meta, dict) else {}
        if meta.get("format_version") not in READABLE_FORMATS:
            raise StoreError(
                f"{path}: not a galclip feature store (format {meta.get('format_version')!r}; its "
                "zarr.json may be damaged)"
            )
        self.format_version: int = int(meta["format_version"])
        self._complete = None
        if self.format_version >= 2 and verify:
            _verify_metadata(path, meta, group.attrs.get("galclip_sha256"))
        try:
            self.n: int = int(meta["n"])
            self.rows_per_shard: int = int(meta["rows_per_shard"])
            self.n_shards: int = int(meta["n_shards"])
            self._recorded_provenance: dict = meta["provenance"]  # as written: the fingerprint hashes it
            self.provenance: dict = _with_defaults(copy.deepcopy(meta["provenance"]))
            self.feature_arrays: dict[str, tuple[int, ...]] = {
                k: tuple(v) for k, v in meta.get("feature_arrays", BASE_FEATURES).items()
            }
            self.meta_arrays: tuple[str, ...] = tuple(meta.get("meta_arrays", META_ARRAYS))
            self.derived_arrays: tuple[str, ...] = (*self.meta_arrays, QUARANTINE)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DamagedDataError(
                f"{path}/zarr.json: the store's attributes are damaged ({type(err).__name__}: {err}); {METADATA_FIX}"
            ) from err

    # ---- creation / opening -------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        meta: dict[str, np.ndarray],
        provenance: dict,
        rows_per_shard: int = 256,
        feature_arrays: dict[str, tuple[int, ...]] | None = None,
        moco_fc: dict[str, np.ndarray] | None = None,
    ) -> FeatureStore:
        """Write a new empty store atomically (built under a temporary name, then renamed).

        ``feature_arrays`` maps each per-row feature array to its shape after the row axis
        (default: the two base arrays); ``moco_fc`` holds the image checkpoint's fc MLP.
        """
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: already exists; open it to resume, or remove it to start again")
        n = len(meta["targetid"])
        n_shards = max(1, -(-n // rows_per_shard))
        try:
            with atomic_dir(path) as tmp:
                cls._write_empty(tmp, meta, provenance, rows_per_shard, n, n_shards, feature_arrays, moco_fc)
                _fsync_tree(tmp)
        finally:
            tmp = temporary_name(Path(os.path.realpath(path)))  # atomic_dir's temporary folder
            for _ in range(20):  # a failure half-way leaves no temporary folder behind; zarr's writer threads may
                if not tmp.exists():  # still land a file in it just after the error, so look again
                    break
                shutil.rmtree(tmp, ignore_errors=True)
                time.sleep(0.05)
        fsync_path(path.parent)
        return cls.open(path, mode="r+")

    @staticmethod
    def _write_empty(
        tmp: Path,
        meta: dict[str, np.ndarray],
        provenance: dict,
        rows_per_shard: int,
        n: int,
        n_shards: int,
        feature_arrays: dict | None,
        moco_fc: dict | None,
    ) -> None:
        import zarr

        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        values = {}
        names = (*META_ARRAYS, *(n for n in meta if n not in META_ARRAYS))
        unknown = [n for n in names if not meta_dtype(n)]
        if unknown:
            raise ValueError(
                f"unknown per-row metadata array(s) {unknown}: a store holds {META_ARRAYS}, label_*, ra, dec"
            )
        for name in names:
            dtype = meta_dtype(name)
            arr = group.create_array(
                name,
                shape=(n,),
                chunks=(rows_per_shard,),
                dtype=dtype,
                fill_value=np.nan if dtype == "float32" else 0,
                compressors=_codecs(),
                config={"write_empty_chunks": True},
            )
            data = np.ascontiguousarray(np.asarray(meta[name]).astype(dtype))
            arr[:] = data
            values[name] = values_sha256(data)
        feature_arrays = dict(feature_arrays or BASE_FEATURES)
        for name, tail in feature_arrays.items():
            group.create_array(
                name,
                shape=(n, *tail),
                chunks=(rows_per_shard, *tail),
                dtype="float32",
                fill_value=np.nan,
                compressors=_codecs(),
            )
        group.create_array(COMPLETE, shape=(n_shards,), chunks=(1,), dtype="uint8", fill_value=0, compressors=_codecs())
        group.create_array(
            QUARANTINE, shape=(n,), chunks=(rows_per_shard,), dtype="uint8", fill_value=0, compressors=_codecs()
        )
        if moco_fc:
            fc = group.create_group(MOCO_FC)
            for key, value in moco_fc.items():
                fc.create_array(
                    key, shape=value.shape, dtype="float32", compressors=_codecs(), config={"write_empty_chunks": True}
                )[...] = np.asarray(value, np.float32)
        meta = {
            "format_version": FORMAT_VERSION,
            "n": n,
            "rows_per_shard": rows_per_shard,
            "n_shards": n_shards,
            "feature_arrays": {k: list(v) for k, v in feature_arrays.items()},
            "provenance": provenance,
            **({"meta_arrays": list(names)} if names != META_ARRAYS else {}),
            "metadata_sha256": {
                str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("zarr.json")) if p.parent != tmp
            },
            "values_sha256": values,
        }
        group.attrs["galclip"] = meta
        group.attrs["galclip_sha256"] = canonical_sha256(group.attrs["galclip"])

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", validate: bool = True) -> FeatureStore:
        """Open a store; with ``validate`` refuse one whose arrays are missing (``galclip check`` opens
        without, to list every problem)."""
        import zarr

        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: no feature store here; run 'galclip extract DATA {path}' first")
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception as err:
            raise StoreError(f"{path}: unreadable store metadata ({err}); re-extract into a new store") from err
        store = cls(path, group, mode, verify=validate)
        try:
            missing = store.missing_arrays()
        except (ValueError, KeyError, TypeError) as err:  # array metadata that does not parse (format 1: no hashes)
            raise DamagedDataError(
                f"{path}: array metadata unreadable ({type(err).__name__}: {err}); {METADATA_FIX}"
            ) from err
        if validate and missing:
            raise StoreError(
                f"{path}: damaged store, array(s) {missing} are missing; 'galclip check {path}' lists "
                "every problem. It cannot be repaired in place: extract again into a new store"
            )
        return store

    def metadata_problems(self) -> list[str]:
        """Damaged metadata of a format-2 store (empty when intact, and for format 1, which records no hashes)."""
        if self.format_version < 2:
            return []
        return metadata_problems(
            self.path, dict(self.group.attrs.get("galclip", {})), self.group.attrs.get("galclip_sha256")
        )

    def missing_arrays(self) -> list[str]:
        """Names of the arrays every store has (metadata, features, completion flags) that are absent."""
        return [name for name in (*self.meta_arrays, *self.feature_arrays, COMPLETE) if name not in self.group]

    # ---- metadata ---------------------------------------------------------------
    def complete_mask(self) -> np.ndarray:
        """(S,) bool: which shards are written and flushed (read from disk each time)."""
        self._complete = self.read_whole(COMPLETE).astype(bool)
        return self._complete.copy()

    def _complete_cached(self) -> np.ndarray:
        return self._complete if self._complete is not None else self.complete_mask()

    def shard_rows(self, shard: int) -> tuple[int, int]:
        lo = shard * self.rows_per_shard
        return lo, min(lo + self.rows_per_shard, self.n)

    def read_meta(self, name: str) -> np.ndarray:
        """One per-row metadata array (N,): targetid, split, redshift, label_<name> or, where held, ra / dec."""
        if name not in self.meta_arrays:
            raise KeyError(f"{name!r} is not a per-row metadata array of {self.path}; choose from {self.meta_arrays}")
        return self.read_whole(name)

    def read_whole(self, name: str) -> np.ndarray:
        """A whole small array (metadata, completion flags, quarantine codes), checked like ``read``: in a format-2
        store every metadata chunk, and the quarantine chunk of every complete shard, must exist (a missing one
        would read back as fill values)."""
        if name in self.derived_arrays:
            self._require_chunk_files(name, range(self.n_shards), every=name in self.meta_arrays)
        try:
            return self.group[name][:]
        except (ValueError, RuntimeError, OSError, KeyError) as err:
            n_chunks = -(-self.group[name].shape[0] // self.group[name].chunks[0])
            size = self.group[name].chunks[0]
            bad = next((c for c in range(n_chunks) if not chunk_decodes(self.group[name], c * size, (c + 1) * size)), 0)
            if name == COMPLETE:
                raise DamagedDataError(
                    f"{self.path}: array '{name}' (the completion flag of shard {bad}) is damaged "
                    f"({type(err).__name__}: {err}). Run 'galclip check {self.path} --repair', then the same "
                    "'galclip extract'"
                ) from err
            raise self.damaged(name, bad, f"{type(err).__name__}: {err}") from err

    def targetids(self) -> np.ndarray:
        """(N,) int64 targetids in store order."""
        return self.read_meta("targetid")

    def split(self) -> np.ndarray:
        """(N,) uint8: 0 train, 1 test, 2 selection, computed from the targetids (a pure function of each), so a
        store written before the selection split existed (codes 0/1) gets it without re-extraction."""
        from galclip.split import assign_split, split_fractions

        return assign_split(self.targetids(), *split_fractions(self.provenance))

    @property
    def label_names(self) -> tuple[str, ...]:
        """The labels the store holds: redshift and log_mstar, then the other PROVABGS properties and ``--label``
        columns the catalogue gave (none for a store extracted before them)."""
        return tuple(n[len(LABEL_PREFIX) :] for n in self.meta_arrays if n.startswith(LABEL_PREFIX))

    def labels(self) -> dict[str, np.ndarray]:
        """Catalogue labels, (N,) float32 each, NaN where a galaxy has none: {"redshift", "log_mstar", ...}."""
        return {name: self.read_meta(f"{LABEL_PREFIX}{name}") for name in self.label_names}

    def positions(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(ra, dec) (N,) float64 degrees each (NaN where the survey files gave none); None for a store without."""
        if "ra" not in self.meta_arrays:
            return None
        return self.read_meta("ra"), self.read_meta("dec")

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
        h = hashlib.sha256(sorted_json({k: self._recorded_provenance.get(k) for k in COMPAT_KEYS}).encode())
        h.update(np.ascontiguousarray(self.read_whole("targetid")).tobytes())
        return h.hexdigest()[:16]

    def info(self) -> StoreInfo:
        split = self.split()
        labelled = np.isfinite(self.read_whole("label_redshift")) & np.isfinite(self.read_whole("label_log_mstar"))
        arrays = {
            name: (tuple(self.group[name].shape), str(self.group[name].dtype))
            for name in (*self.meta_arrays, *self.feature_arrays, QUARANTINE, COMPLETE)
            if name in self.group
        }
        return StoreInfo(
            path=str(self.path),
            n=self.n,
            n_train=int((split == TRAIN).sum()),
            n_selection=int((split == SELECTION).sum()),
            n_test=int((split == TEST).sum()),
            n_labelled=int(labelled.sum()),
            rows_per_shard=self.rows_per_shard,
            n_shards=self.n_shards,
            n_complete=int(self.complete_mask().sum()),
            arrays=arrays,
            provenance=self.provenance,
            fingerprint=self.fingerprint(),
        )

    def check_compatible(self, provenance: dict, fix: str | None = None) -> None:
        """Refuse to resume with other encoders, preprocessing or data: name the difference, then ``fix`` (what to
        run instead; the writer knows the command line)."""
        diffs = []
        mine, theirs = _with_backend(self.provenance), _with_backend(provenance)
        for key in COMPAT_KEYS:
            diffs += leaf_diff(mine.get(key), theirs.get(key), key)
        if diffs:
            raise StoreError(
                f"{self.path}: was made with different settings, so its features cannot be mixed with this run's:\n  "
                + "\n  ".join(diffs)
                + "\n"
                + (fix or "Use another store path for these settings")
            )

    # ---- writing -------------------------------------------------------------
    def write_shard(self, shard: int, features: dict[str, np.ndarray], quarantine: np.ndarray | None = None) -> None:
        """Write every feature array of one shard (and its rows' quarantine codes), flush, then flag it complete."""
        lo, hi = self.shard_rows(shard)
        self._complete = None
        if quarantine is None and self.format_version >= 2:  # every chunk of a complete shard exists (format 2)
            quarantine = np.zeros(hi - lo, np.uint8)
        if quarantine is not None and QUARANTINE in self.group:
            self._write_chunk(QUARANTINE, shard, slice(lo, hi), np.asarray(quarantine, np.uint8))
        for name, tail in self.feature_arrays.items():
            data = np.asarray(features[name], np.float32)
            if data.shape != (hi - lo, *tail):
                raise ValueError(f"{name} for shard {shard} has shape {data.shape}, expected {(hi - lo, *tail)}")
            self._write_chunk(name, shard, slice(lo, hi), data)
        self._write_chunk(COMPLETE, shard, shard, 1)

    def _write_chunk(self, name: str, shard: int, where: slice | int, value) -> None:
        """Write shard ``shard``'s chunk of array ``name`` (``array[where] = value``) and fsync it; a failed write
        names the chunk file (zarr's own writes name none). In format 2 every chunk is written, even one that is all
        fill value (a NaN shard of quarantined rows), so a complete shard always has its chunk files and a missing
        one is damage; format 1 wrote no all-fill chunks, and a resumed old store stays as it was."""
        array = self.group[name]
        if self.format_version >= 2:
            array = array.with_config({"write_empty_chunks": True})
        with naming_os_errors(self.chunk_file(name, shard)):
            array[where] = value
            _fsync_tree(self.path / name / "c" / str(shard))

    def mark_incomplete(self, shard: int) -> None:
        """Clear shard ``shard``'s completion flag (flushed): the next extraction with the same settings writes it
        again (``galclip check --repair``)."""
        self._complete = None
        self._write_chunk(COMPLETE, shard, shard, 0)

    # ---- rebuilding what extraction derives from its input files ---------------------
    def recorded_values_sha256(self, name: str) -> str | None:
        """The SHA-256 of metadata array ``name``'s values (``values_sha256``) recorded when the store was created;
        None for a store written before galclip recorded them."""
        meta = self.group.attrs.get("galclip", {})
        return ((meta.get("values_sha256") if isinstance(meta, dict) else None) or {}).get(name)

    def rebuild_chunk(self, name: str, shard: int, values: np.ndarray) -> None:
        """Write shard ``shard``'s chunk of derived array ``name`` (one of ``DERIVED_ARRAYS``) again: ``values`` holds
        the shard's rows (hi - lo,). The damaged file is removed first (zarr never merges into it); the chunk is then
        written and fsync'ed as at creation (same codecs), so its bytes are those of the original."""
        if name not in self.derived_arrays:
            raise KeyError(f"{name!r} is not derived from the input files alone; choose from {self.derived_arrays}")
        lo, hi = self.shard_rows(shard)
        values = np.asarray(values).astype(self.group[name].dtype, copy=False)
        if values.shape != (hi - lo,):
            raise ValueError(f"{name} for shard {shard} has shape {values.shape}, expected {(hi - lo,)}")
        file = self.chunk_file(name, shard)
        with naming_os_errors(file):
            file.unlink(missing_ok=True)
        self._write_chunk(name, shard, slice(lo, hi), values)

    def rebuild_moco_fc(self, fc: dict[str, np.ndarray], keys: tuple[str, ...] = MOCO_FC_KEYS) -> None:
        """Write the stored projection MLP's arrays ``keys`` again from ``fc``, the image checkpoint's fc state
        (``0.weight`` (2048, 2048), ...) as at creation: every chunk, fsync'ed."""
        for key in keys:
            name = f"{MOCO_FC}/{key}"
            array = self.group[name]
            value = np.asarray(fc[key], np.float32)
            if value.shape != tuple(array.shape):
                raise ValueError(f"{name}: the checkpoint's array has shape {value.shape}, the store's {array.shape}")
            with naming_os_errors(self.path / name):
                shutil.rmtree(self.path / name / "c", ignore_errors=True)
                array.with_config({"write_empty_chunks": True})[...] = value
                _fsync_tree(self.path / name / "c")

    # ---- reading --------------------------------------------------------------
    def chunk_file(self, name: str, shard: int) -> Path:
        """The file of shard ``shard`` of per-row array ``name`` (its one chunk along the row axis); for an array in
        a subgroup (``moco_fc/0.weight``, one chunk) shard 0 is its chunk."""
        ndim = len(self.group[name].shape) if name in self.group else 1
        return self.path / name / "c" / str(shard) / Path(*(["0"] * (ndim - 1)))

    def chunk_files(self, name: str) -> Iterator[Path]:
        """Every chunk file of array ``name`` (e.g. the 32 of ``moco_fc/0.weight``, which zarr chunks (256, 512)), in
        C order: in a format-2 store each one was written, so a missing one is damage."""
        import itertools

        array = self.group[name]
        grid = [range(-(-size // chunk)) for size, chunk in zip(array.shape, array.chunks)]
        for index in itertools.product(*grid):
            yield self.path / name / "c" / Path(*map(str, index or (0,)))

    def read(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of per-row array ``name``. A chunk that fails its checksum, does not decode, or is missing
        from a complete shard raises :class:`DamagedDataError` naming the array, shard, rows and targetids, and
        the repair."""
        first, last = lo // self.rows_per_shard, max(lo, hi - 1) // self.rows_per_shard
        self._require_chunk_files(name, range(first, last + 1))
        try:
            return self.group[name][lo:hi]
        except (ValueError, RuntimeError, OSError, KeyError) as err:  # checksum mismatch, Zstd error, bad frame
            shard = next(
                (s for s in range(first, last + 1) if not chunk_decodes(self.group[name], *self.shard_rows(s))), first
            )
            raise self.damaged(name, shard, f"{type(err).__name__}: {err}") from err

    def _require_chunk_files(self, name: str, shards: range, every: bool = False) -> None:
        """In a format-2 store every chunk of a complete shard (of every shard with ``every``: the metadata, written
        at creation) was written, so a missing one is damage: it would read back as fill values."""
        if self.format_version < 2:
            return
        done = None if every else self._complete_cached()
        for shard in shards:
            if (every or done[shard]) and not self.chunk_file(name, shard).exists():
                raise self.damaged(name, shard, "its chunk file is missing")

    def damaged(self, name: str, shard: int, why: str) -> DamagedDataError:
        """The error for a damaged chunk: array, shard, rows, targetids (when readable) and the repair."""
        lo, hi = self.shard_rows(shard)
        ids = ""
        if name != "targetid":
            try:
                t = self.group["targetid"][lo:hi]
                ids = f", targetids {int(t.min())}..{int(t.max())}"
            except Exception:
                ids = ""
        if name in self.derived_arrays:  # derived from the input files alone: rebuilt from them, no encoder runs
            return DamagedDataError(
                f"{self.path}: array '{name}', shard {shard} (rows {lo}-{hi - 1}{ids}) is damaged ({why}). It holds "
                f"what extraction derives from the input files, not features: run 'galclip check {self.path} "
                "--repair' (it names the files needed), then the same 'galclip extract', which rebuilds it from them "
                "without running an encoder"
            )
        return DamagedDataError(
            f"{self.path}: array '{name}', shard {shard} (rows {lo}-{hi - 1}{ids}) is damaged ({why}). Run "
            f"'galclip check {self.path} --repair', then the same 'galclip extract' to re-extract that shard"
        )

    def quarantine(self) -> np.ndarray:
        """(N,) uint8: 0 for usable rows, else the reason code of a skipped bad input row."""
        return self.read_whole(QUARANTINE) if QUARANTINE in self.group else np.zeros(self.n, np.uint8)

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
        unknown = [n for n in names if n not in self.feature_arrays and n not in self.meta_arrays]
        if unknown:
            raise StoreError(f"{self.path}: no array {unknown}; it holds {sorted(self.feature_arrays)}")
        wanted = self.require_complete(allow_partial=True) if rows is None else np.asarray(rows, bool)
        complete = self.complete_mask()
        for shard in np.flatnonzero(complete):  # never decode chunks of shards still being written
            lo, hi = self.shard_rows(int(shard))
            keep = wanted[lo:hi]
            if keep.any():
                yield lo, keep, {name: self.read(name, lo, hi)[keep] for name in names}

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
                out[name][at : at + n] = block
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
        return self.read_rows(np.flatnonzero(rows), (*self.meta_arrays, *names))

    def moco_fc(self) -> dict[str, np.ndarray] | None:
        """The image checkpoint's projection MLP (keys 0.weight, 0.bias, 2.weight, 2.bias), if stored."""
        if MOCO_FC not in self.group:
            return None
        fc = self.group[MOCO_FC]
        try:
            if self.format_version >= 2:
                missing = [
                    key for key in MOCO_FC_KEYS if not all(f.exists() for f in self.chunk_files(f"{MOCO_FC}/{key}"))
                ]
                if missing:
                    raise ValueError(f"chunk file(s) of {missing} missing")
            return {key: fc[key][...] for key in MOCO_FC_KEYS}
        except (ValueError, RuntimeError, OSError, KeyError) as err:
            raise DamagedDataError(
                f"{self.path}/{MOCO_FC}: the stored projection MLP is damaged ({err}); run 'galclip check {self.path} "
                "--repair' (it says whether the image checkpoint it was copied from is there), then the same "
                "'galclip extract', which copies it again from the checkpoint; or restore the store from a copy"
            ) from err


def chunk_decodes(array, lo: int, hi: int) -> bool:
    """Whether rows [lo, hi) of zarr array ``array`` read back: False when a chunk there fails its checksum or does
    not decode (a missing chunk reads as fill values: see ``FeatureStore.chunk_file``)."""
    try:
        array[lo:hi]
        return True
    except Exception:
        return False
