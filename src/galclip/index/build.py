"""Build the similarity-search indexes over the whole store: one FAISS index per modality, chosen by size.

Up to ``exact_max`` vectors: exact ``IndexFlatIP``. Above: ``IndexIVFFlat`` (inner product)
with nlist ≈ 4·√N lists trained on a sample, and the smallest nprobe whose recall@10 against
exact search, measured on held-out queries at build time, reaches the recall floor; an index
that cannot reach the floor is refused. Vectors are the heads' embeddings, L2-normalised
(report eq. 5), computed from feature blocks streamed out of the store into memory-mapped
``.npy`` files, so neither the store nor the embeddings have to fit in memory. The index folder
(FAISS files, embeddings, per-row arrays, JSON sidecar) is built under a temporary name and
swapped in whole.

The sidecar ``index.json`` (format 3) records the size and SHA-256 of every other file in the
folder and its own SHA-256 (``sidecar_sha256``, over its canonical JSON without that field), and
the store and heads paths relative to the folder (beside the absolute ones) with the store's
fingerprint and the heads' SHA-256, so a folder that moves still finds them, or names the one it
cannot find.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from galclip.atomic import atomic_dir, reserve_space
from galclip.errors import GalclipError
from galclip.heads.checkpoint import checkpoint_file, load_heads
from galclip.index.embed import embed_store
from galclip.index.format import FILES as INDEX_FILES
from galclip.index.format import FORMAT, MAP_FILE, ROWS_FILE, SIDECAR, file_manifest, write_sidecar
from galclip.index.vectors import (
    PROCESS_BYTES,
    IndexSpec,
    VectorIndex,
    candidates,
    new_index,
    set_nprobe,
    smallest,
    training_sample,
    tune,
    write_index,
)
from galclip.neighbours import drop_self
from galclip.outputs import check_output_dir, foreign_entries, write_marker
from galclip.progress import progress as progress_bar
from galclip.provenance import sha256_file
from galclip.store import FeatureStore
from galclip.vocabulary import MODALITIES

logger = logging.getLogger(__name__)


def on_gpu_if_available(index):
    """The same index on the first GPU when faiss-gpu and a CUDA device are present, else unchanged.

    Used to train and fill indexes (k-means and adds are the GPU's gain); ``to_cpu`` brings them back
    for tuning, saving and searching, so an index built on a GPU node searches anywhere."""
    import faiss

    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        resources = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(resources, 0, index)
        gpu._galclip_resources = resources  # the GPU memory must live as long as the index
        return gpu
    return index


def to_cpu(index):
    import faiss

    return faiss.index_gpu_to_cpu(index) if "Gpu" in type(index).__name__ else index


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact inner-product top-k ids (m, k) by brute force, without copying ``vectors`` into an index."""
    return _knn(queries, np.ascontiguousarray(vectors, np.float32), k)[1]


def index_recall(index, truth: np.ndarray, queries: np.ndarray, self_ids: np.ndarray | None = None) -> float:
    """recall@k of ``index`` against the exact top-k ids ``truth`` (m, k): share of true neighbours found.

    ``self_ids`` (m,): when the queries are rows of the index, each query's own row, which is left
    out of both the truth and the results (``truth`` must then hold k + 1 ids).
    """
    if self_ids is None:
        k = truth.shape[1]
        _, got = index.search(np.ascontiguousarray(queries, np.float32), k)
        return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got)]))
    k = truth.shape[1] - 1
    _, got = index.search(np.ascontiguousarray(queries, np.float32), k + 1)
    _, truth = drop_self(truth, truth, self_ids)
    _, got = drop_self(got, got, self_ids)
    return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth, got)]))


def tune_nprobe(
    index, truth: np.ndarray, queries: np.ndarray, floor: float, self_ids: np.ndarray | None = None
) -> tuple[int, float]:
    """Smallest power-of-two nprobe whose recall reaches ``floor``: (nprobe, recall); raises if none does."""
    nprobe = 1
    while True:
        index.nprobe = min(nprobe, index.nlist)
        recall = index_recall(index, truth, queries, self_ids)
        if recall >= floor:
            return index.nprobe, recall
        if index.nprobe == index.nlist:
            raise GalclipError(
                f"the IVF index reaches recall@10 {recall:.3f} < floor {floor} even with "
                "every list probed; lower --recall-floor or raise --exact-max to keep exact search"
            )
        nprobe *= 2


def exact_neighbours_streamed(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """Exact inner-product top-k ids (m, k) of ``queries`` (m, d) over ``vectors`` (n, d) read ``block`` rows
    at a time (a memory map need not fit in memory); ties go to the lower id."""
    m = len(queries)
    best_s = np.full((m, 0), -np.inf, np.float32)
    best_i = np.zeros((m, 0), np.int64)
    for lo in range(0, len(vectors), block):
        chunk = np.ascontiguousarray(vectors[lo : lo + block], np.float32)
        s, i = _knn(queries, chunk, min(k, len(chunk)))
        cand_s, cand_i = np.hstack([best_s, s]), np.hstack([best_i, i + lo])
        order = np.lexsort((cand_i, -cand_s), axis=-1)[:, :k]  # by score, then by id
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def _knn(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    return faiss.knn(np.ascontiguousarray(queries, np.float32), vectors, k, metric=faiss.METRIC_INNER_PRODUCT)


def _foreign_files(out: Path, overwrite: bool) -> bool:
    """Refuse an ``out`` that is not an index folder (unless ``overwrite``: then whether it holds files galclip did
    not write, which are kept and the index's files written beside them)."""
    check_output_dir(out, "index", INDEX_FILES, overwrite)
    return out.is_dir() and bool(foreign_entries(out, INDEX_FILES))


def store_modalities(store: FeatureStore) -> tuple[str, ...]:
    """The modalities a store holds features of: both for a paired store, one for an image- or spectrum-only one."""
    return tuple(m for m in MODALITIES if f"{m}_features" in store.feature_arrays)


@dataclass
class _Part:
    """One store's galaxies in the index: the store rows kept (a targetid already indexed is skipped)."""

    path: Path
    store: FeatureStore
    rows: np.ndarray
    targetid: np.ndarray
    modalities: tuple[str, ...]
    duplicates: int = 0
    offsets: dict = field(default_factory=dict)  # modality -> first position in that modality's vectors


def _check_compatible(reference: FeatureStore, other: FeatureStore, path: Path, heads_path: Path) -> None:
    """Refuse a store whose features would not land in the heads' space: another encoder or preprocessing than the
    heads' own store for some modality it holds."""
    from galclip.store.identity import encoder_differences

    mods = store_modalities(other)
    if not mods:
        raise GalclipError(f"{path}: holds no image or spectrum features to index")
    for m in mods:
        diffs = encoder_differences(reference.provenance, other.provenance, m)
        if diffs:
            raise GalclipError(
                f"{path}: its {m} features come from another encoder or preprocessing than the store the heads "
                f"{heads_path} were trained on ({reference.path}):\n  "
                + "\n  ".join(
                    d.replace("store has", "heads' store has").replace("this run has", "it has") for d in diffs
                )
                + "\nextract it with the same weights and preprocessing ('galclip predict' does so), or train heads "
                "on it"
            )


def _plan(paths: list[Path], stores: list[FeatureStore], seen: np.ndarray, allow_partial: bool) -> list[_Part]:
    """Each store's rows to index, in order; a targetid held by an earlier store (or ``seen``) is skipped."""
    parts = []
    for path, store in zip(paths, stores):
        rows = np.flatnonzero(store.require_complete(allow_partial))
        tid = store.read_meta("targetid")[rows]
        new = ~np.isin(tid, seen)
        if not new.all():
            logger.info("%s: %d galaxies already indexed from an earlier store are skipped", path, int((~new).sum()))
        parts.append(_Part(path, store, rows[new], tid[new], store_modalities(store), int((~new).sum())))
        seen = np.concatenate([seen, tid[new]])
    return parts


def _row_arrays(parts: list[_Part], first: int) -> dict[str, np.ndarray]:
    """The per-row arrays of the parts' galaxies, in index order: row, targetid, split, store (numbered from
    ``first``), each label (NaN where a store has none) and ra/dec where any store has positions."""
    label_names: list[str] = []
    for p in parts:
        label_names += [n for n in p.store.label_names if n not in label_names]
    out: dict[str, list] = {k: [] for k in ("row", "targetid", "split", "store", *label_names)}
    positions = [p.store.positions() for p in parts]
    with_positions = any(pos is not None for pos in positions)
    if with_positions:
        out["ra"], out["dec"] = [], []
    for i, (p, pos) in enumerate(zip(parts, positions)):
        out["row"].append(p.rows)
        out["targetid"].append(p.targetid)
        out["split"].append(p.store.split()[p.rows])
        out["store"].append(np.full(len(p.rows), first + i, np.int16))
        labels = p.store.labels()
        for name in label_names:
            out[name].append(labels[name][p.rows] if name in labels else np.full(len(p.rows), np.nan, np.float32))
        if with_positions:
            for j, key in enumerate(("ra", "dec")):
                out[key].append(pos[j][p.rows] if pos is not None else np.full(len(p.rows), np.nan))
    return {k: np.concatenate(v) for k, v in out.items()}


def _membership(parts: list[_Part], first_position: int) -> dict[str, np.ndarray]:
    """modality -> (n_m,) int64 positions (in the index's rows) of the galaxies that have it, in vector order."""
    out: dict[str, list] = {m: [] for m in MODALITIES}
    pos = first_position
    for p in parts:
        for m in p.modalities:
            out[m].append(np.arange(pos, pos + len(p.rows), dtype=np.int64))
        pos += len(p.rows)
    return {m: np.concatenate(v) if v else np.zeros(0, np.int64) for m, v in out.items()}


def _embed_parts(parts: list[_Part], heads, emb: dict, counts: dict[str, int], batch: int, progress: bool) -> None:
    """Embed each part's rows into ``emb[m]`` (memory maps) after the ``counts[m]`` vectors already there."""
    total = sum(len(p.rows) for p in parts)
    with progress_bar(total, "embed", "galaxy", enabled=progress) as bar:
        for p in parts:
            for m in p.modalities:
                p.offsets[m] = counts[m]
            for lo, z in embed_store(p.store, heads, p.rows, batch, p.modalities):
                for m in p.modalities:
                    emb[m][p.offsets[m] + lo : p.offsets[m] + lo + len(z[m])] = z[m]
                bar.update(len(next(iter(z.values()))))
            for m in p.modalities:
                counts[m] += len(p.rows)


def _budgets(max_memory: int | None, counts: dict[str, int], rows: dict[str, np.ndarray]) -> dict[str, int | None]:
    """Each modality's share of ``max_memory`` (bytes): what is left after the process itself and the per-row
    arrays, split in proportion to the vectors."""
    if max_memory is None:
        return dict.fromkeys(counts)
    left = max_memory - PROCESS_BYTES - sum(int(v.nbytes) for v in rows.values())
    total = max(1, sum(counts.values()))
    return {m: int(max(0, left) * n / total) for m, n in counts.items()}


def _queries(rng: np.random.Generator, n: int, n_queries: int) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(n_queries, n), replace=False))


def _build_modality(
    m: str,
    vectors: np.ndarray,
    specs: list[IndexSpec],
    rng: np.random.Generator,
    recall_floor: float,
    n_queries: int,
    batch: int,
    budget: int | None,
) -> tuple[object, IndexSpec, float]:
    """Build, fill and tune ``m``'s index over ``vectors`` (n, d) (a memory map): the first of ``specs`` (best
    first) that reaches the recall floor; refuses naming the closest when none does."""

    n, d = vectors.shape
    queries = _queries(rng, n, n_queries)
    q = np.ascontiguousarray(vectors[queries])
    truth = None
    tried = []
    for spec in specs:
        index = on_gpu_if_available(new_index(spec, d))
        if spec.kind != "flat":
            index.train(np.ascontiguousarray(vectors[training_sample(spec, n, rng)]))
        for lo in range(0, n, batch):
            index.add(np.ascontiguousarray(vectors[lo : lo + batch]))
        index = to_cpu(index)  # tuned, saved and searched on the CPU
        if spec.kind == "flat":
            return index, spec, 1.0
        if truth is None:  # queries are rows of the index: each one's own row is left out of truth and results
            truth = exact_neighbours_streamed(vectors, q, 11, batch)
        try:
            tuned, recall = tune(VectorIndex(index, spec, vectors), truth, q, recall_floor, self_ids=queries)
        except GalclipError as err:
            tried.append(str(err))
            logger.info("%s index: %s", m, err)
            del index
            continue
        set_nprobe(index, tuned.nprobe)
        return index, tuned, recall
    hint = "raise --exact-max to keep exact search" if budget is None else "raise --max-memory for a larger kind"
    raise GalclipError(
        f"the {m} index cannot reach recall@10 {recall_floor}: "
        + "; ".join(tried)
        + f"; lower --recall-floor or {hint}"
    )


def _size(n: float) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _refuse_budget(max_memory: int, counts: dict[str, int], rows: dict[str, np.ndarray], d: int) -> GalclipError:
    need = PROCESS_BYTES + sum(int(v.nbytes) for v in rows.values())
    parts = []
    for m, n in counts.items():
        if n:
            spec, b = smallest(n, d)
            need += b
            parts.append(f"{spec.describe()} for {n:,} {m} vectors needs {_size(b)}")
    return GalclipError(
        f"--max-memory {_size(max_memory)}: no index kind fits; the closest, "
        + " and ".join(parts)
        + f", with the per-row arrays and {PROCESS_BYTES // 2**20} MiB for the process: {_size(need)} in "
        "all; raise --max-memory"
    )


def _index_record(m: str, spec: IndexSpec, recall: float, ntotal: int, d: int) -> dict:
    from galclip.index.vectors import resident_bytes

    return {
        "file": f"{m}.faiss",
        "embeddings": f"{m}.npy",
        **asdict(spec),
        "recall@10": recall,
        "ntotal": int(ntotal),
        "resident_bytes": resident_bytes(spec, ntotal, d),
    }


def _store_record(path: Path, out: Path, part: _Part | None, store: FeatureStore) -> dict:
    return {
        "path": os.path.relpath(Path(path).resolve(), out.resolve()),
        "absolute": str(Path(path).resolve()),
        "fingerprint": store.fingerprint(),
        "modalities": list(store_modalities(store)),
        "n": 0 if part is None else len(part.rows),
        "duplicates": 0 if part is None else part.duplicates,
    }


def build_indexes(
    store_path: str | Path,
    heads_path: str | Path,
    out_dir: str | Path,
    exact_max: int = 250_000,
    recall_floor: float = 0.95,
    n_queries: int = 1000,
    batch: int = 4096,
    seed: int = 0,
    allow_partial: bool = False,
    progress: bool = False,
    embedding_map: bool = False,
    map_max_points: int = 20000,
    overwrite: bool = False,
    also: tuple[str | Path, ...] = (),
    max_memory: int | None = None,
) -> dict:
    """Embed every galaxy of ``store_path`` (the store the heads were trained on) and of each store in ``also``
    (paired, image-only or spectrum-only, extracted with the same encoders), and write into ``out_dir``:
    ``{m}.faiss`` and ``{m}.npy`` (the (N_m, 128) embeddings of the galaxies that have modality m), ``rows.npz``
    and ``index.json``; with ``embedding_map`` also ``map.npy``, the (N_image, 2) UMAP map of the image embeddings.

    A targetid already indexed from an earlier store is skipped and counted. ``max_memory`` (bytes): the index
    kind whose resident size fits it (with the per-row arrays and the process), the best first; without, exact up
    to ``exact_max`` and IVF-Flat above. Streams: features ``batch`` rows at a time, embeddings to memory-mapped
    files. The folder is built under a temporary name and swapped in whole: a crash leaves the previous index.
    ``out_dir`` must be new, empty or an earlier index folder; with ``overwrite`` any folder, whose other files are
    kept."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    keep_others = _foreign_files(out, overwrite)
    paths = [Path(store_path), *map(Path, also)]
    stores = [FeatureStore.open(p) for p in paths]
    heads, _ = load_heads(heads_path, stores[0])
    fingerprints: dict[str, Path] = {}
    for path, store in zip(paths, stores):
        if store.fingerprint() in fingerprints:
            raise GalclipError(f"{path}: the same store as {fingerprints[store.fingerprint()]} is given twice")
        fingerprints[store.fingerprint()] = path
        if store is not stores[0]:
            _check_compatible(stores[0], store, path, Path(heads_path))
    parts = _plan(paths, stores, np.zeros(0, np.int64), allow_partial)
    if not sum(len(p.rows) for p in parts):
        raise GalclipError(f"{store_path}: no readable galaxies to index")
    rows = _row_arrays(parts, 0)
    members = _membership(parts, 0)
    counts = {m: len(v) for m, v in members.items()}
    d = heads.image.sizes[-1]
    budgets = _budgets(max_memory, counts, {**rows, **members})
    specs = {m: candidates(n, d, exact_max, budgets[m]) for m, n in counts.items() if n}
    if max_memory is not None and not all(specs.values()):
        raise _refuse_budget(max_memory, counts, {**rows, **members}, d)
    rng = np.random.default_rng(seed)
    with atomic_dir(out, merge_last=SIDECAR if keep_others else None) as tmp:  # a failed write names ``out``
        emb = {m: _open_embeddings(tmp, m, counts[m], d, out) for m in MODALITIES}
        _embed_parts(parts, heads, emb, dict.fromkeys(MODALITIES, 0), batch, progress)
        records = _write_indexes(tmp, emb, specs, rng, recall_floor, n_queries, batch, budgets, d)
        map_info = _write_map(tmp, emb, embedding_map, map_max_points, seed)
        del emb
        _save_rows(tmp, rows, members)
        store_records = [_store_record(p.path, out, p, p.store) for p in parts]
        sidecar = _sidecar(
            out,
            tmp,
            heads_path,
            store_records,
            records,
            rows,
            d,
            recall_floor,
            exact_max,
            max_memory,
            map_info,
            time.perf_counter() - t0,
        )
    return sidecar


def _open_embeddings(tmp: Path, m: str, n: int, d: int, out: Path) -> np.ndarray:
    emb = np.lib.format.open_memmap(tmp / f"{m}.npy", mode="w+", dtype=np.float32, shape=(n, d))
    reserve_space(tmp / f"{m}.npy", name=out)  # a full disk is an ENOSPC now, not a SIGBUS in the map later
    return emb


def _write_indexes(
    tmp: Path, emb: dict, specs: dict, rng, recall_floor: float, n_queries: int, batch: int, budgets: dict, d: int
) -> dict:
    records = {}
    for m, spec_list in specs.items():
        emb[m].flush()
        index, spec, recall = _build_modality(m, emb[m], spec_list, rng, recall_floor, n_queries, batch, budgets[m])
        write_index(index, tmp / f"{m}.faiss")
        records[m] = _index_record(m, spec, recall, index.ntotal, d)
        logger.info("%s index: %s over %d vectors, recall@10 %.3f", m, spec.describe(), index.ntotal, recall)
        del index
    return records


def _write_map(tmp: Path, emb: dict, embedding_map: bool, map_max_points: int, seed: int) -> dict | None:
    if not embedding_map or not len(emb["image"]):
        return None
    from galclip.index.embedding_map import fit_umap

    t_map = time.perf_counter()
    np.save(tmp / MAP_FILE, fit_umap(emb["image"], map_max_points, seed))
    return {"file": MAP_FILE, "of": "image", "max_points": map_max_points, "seconds": time.perf_counter() - t_map}


def _save_rows(tmp: Path, rows: dict, members: dict) -> None:
    """rows.npz: the per-row arrays; ``{m}_pos`` only where not every galaxy has modality m, ``store`` only for an
    index of several stores (an index of one paired store keeps today's layout)."""
    n = len(rows["targetid"])
    extra = {f"{m}_pos": v for m, v in members.items() if len(v) != n}
    first = ("row", "targetid", "split", "store")
    ordered = {**{k: rows[k] for k in first if k in rows}, **{k: v for k, v in rows.items() if k not in first}}
    arrays = {k: v for k, v in ordered.items() if k != "store" or np.any(v != 0)}
    np.savez(tmp / ROWS_FILE, **arrays, **extra)


def _sidecar(
    out, tmp, heads_path, store_records, records, rows, d, recall_floor, exact_max, max_memory, map_info, seconds
) -> dict:
    heads_file = checkpoint_file(heads_path)
    first = store_records[0]
    sidecar = {
        "format": FORMAT,
        "n": int(len(rows["targetid"])),
        "dim": d,
        "indexes": records,
        "recall_floor": recall_floor,
        "store": first["path"],
        "store_absolute": first["absolute"],
        "store_fingerprint": first["fingerprint"],
        "stores": store_records,
        "heads": os.path.relpath(heads_file.resolve(), out.resolve()),
        "heads_absolute": str(heads_file.resolve()),
        "heads_sha256": sha256_file(heads_file),
        "build_seconds": seconds,
        "exact_max": exact_max,
        "max_memory": max_memory,
        "resident_bytes": sum(r["resident_bytes"] for r in records.values()),
        "rows_bytes": int(sum(int(v.nbytes) for v in rows.values())),
        "map": map_info,
        "files": file_manifest(tmp),
    }
    write_sidecar(tmp, sidecar)
    write_marker(tmp, "index")
    return sidecar


def _merge_rows(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The old index's per-row arrays followed by the new store's; a label or position one side lacks is NaN."""
    from galclip.index.format import MEMBER_SUFFIX

    n_old, n_new = len(old["targetid"]), len(new["targetid"])
    keys = [k for k in old if not k.endswith(MEMBER_SUFFIX)] + [k for k in new if k not in old]
    out = {}
    for k in keys:
        if k == "store":
            a = old.get("store", np.zeros(n_old, np.int16))
        else:
            a = old[k] if k in old else np.full(n_old, np.nan, new[k].dtype)
        b = new[k] if k in new else np.full(n_new, np.nan, old[k].dtype)
        out[k] = np.concatenate([a, b.astype(a.dtype, copy=False)])
    if "store" not in out:
        out["store"] = np.concatenate([np.zeros(n_old, np.int16), new["store"]])
    return out


def append_store(
    index_dir: str | Path,
    store_path: str | Path,
    n_queries: int = 1000,
    batch: int = 4096,
    seed: int = 0,
    allow_partial: bool = False,
    progress: bool = False,
) -> dict:
    """Add the galaxies of ``store_path`` (paired, image- or spectrum-only, extracted with the same encoders) to the
    index at ``index_dir`` without embedding again what it holds: its embeddings are copied, the new galaxies
    embedded with the index's heads and added to its FAISS indexes, and nprobe (and the PQ shortlist) tuned again
    to the recall floor on new held-out queries.

    Differs from a fresh build of the same stores only where the docs say: IVF lists and PQ codebooks stay those
    trained on the first stores, and the index kind is not chosen again. A store already in the index is refused,
    as is a result below the recall floor or above the index's ``max_memory``."""
    import faiss

    from galclip.index.search import open_index

    t0 = time.perf_counter()
    out = Path(index_dir)
    index = open_index(out, verify_hashes=True)
    heads_path = index.check_heads()
    reference = index.open_store()
    path = Path(store_path)
    store = FeatureStore.open(path)
    recorded = index.store_records()
    for rec in recorded:
        if rec["fingerprint"] == store.fingerprint():
            raise GalclipError(
                f"{path}: this store is already in the index at {out} (as {rec['path']}); nothing to append"
            )
    heads, _ = load_heads(heads_path, reference)
    _check_compatible(reference, store, path, heads_path)
    parts = _plan([path], [store], index.rows["targetid"], allow_partial)
    if not len(parts[0].rows):
        raise GalclipError(f"{path}: every one of its galaxies is already in the index at {out}; nothing to append")
    old_n = len(index)
    rows = _merge_rows(index.rows, _row_arrays(parts, len(recorded)))
    new_members = _membership(parts, old_n)
    members = {m: np.concatenate([index.members(m), new_members[m]]) for m in MODALITIES}
    old_counts = {m: len(index.embeddings[m]) for m in MODALITIES}
    counts = {m: len(v) for m, v in members.items()}
    d = int(index.sidecar["dim"])
    rng = np.random.default_rng(seed)
    keep_others = bool(foreign_entries(out, INDEX_FILES))
    max_memory = index.sidecar.get("max_memory")
    records = {}
    with atomic_dir(out, merge_last=SIDECAR if keep_others else None) as tmp:
        emb = {m: _open_embeddings(tmp, m, counts[m], d, out) for m in MODALITIES}
        for m in MODALITIES:
            for lo in range(0, old_counts[m], batch):
                hi = min(lo + batch, old_counts[m])
                emb[m][lo:hi] = index.embeddings[m][lo:hi]
        _embed_parts(parts, heads, emb, dict(old_counts), batch, progress)
        for m in MODALITIES:
            emb[m].flush()
            rec = index.sidecar["indexes"].get(m)
            if rec is None or not old_counts[m]:
                specs = candidates(counts[m], d, int(index.sidecar.get("exact_max", 250_000)), None)
                vindex, spec, recall = _build_modality(
                    m, emb[m], specs, rng, index.sidecar["recall_floor"], n_queries, batch, None
                )
            else:
                vindex = faiss.read_index(str(index.path / rec["file"]))
                for lo in range(old_counts[m], counts[m], batch):
                    vindex.add(np.ascontiguousarray(emb[m][lo : min(lo + batch, counts[m])]))
                spec = IndexSpec.from_record(rec)
                spec, recall = _retune(m, vindex, spec, emb[m], rng, index.sidecar["recall_floor"], n_queries, batch)
            write_index(vindex, tmp / f"{m}.faiss")
            records[m] = _index_record(m, spec, recall, vindex.ntotal, d)
            del vindex
        resident = sum(r["resident_bytes"] for r in records.values())
        if max_memory is not None and resident + PROCESS_BYTES + sum(v.nbytes for v in rows.values()) > max_memory:
            raise GalclipError(
                f"{out}: with {path} the index would hold {_size(resident)} of vectors, beyond the "
                f"--max-memory {_size(max_memory)} it was built for; rebuild it with 'galclip index ... "
                "--also' and a larger --max-memory (or let it choose a smaller kind)"
            )
        map_info = _write_map(
            tmp,
            emb,
            index.sidecar.get("map") is not None,
            int((index.sidecar.get("map") or {}).get("max_points", 20000)),
            seed,
        )
        del emb
        _save_rows(tmp, rows, members)
        store_records = recorded + [_store_record(path, out, parts[0], store)]
        sidecar = _sidecar(
            out,
            tmp,
            heads_path,
            store_records,
            records,
            rows,
            d,
            index.sidecar["recall_floor"],
            int(index.sidecar.get("exact_max", 250_000)),
            max_memory,
            map_info,
            time.perf_counter() - t0,
        )
    logger.info(
        "appended %d galaxies of %s to %s (%d already indexed)", len(parts[0].rows), path, out, parts[0].duplicates
    )
    return sidecar


def _retune(m: str, vindex, spec: IndexSpec, vectors: np.ndarray, rng, floor: float, n_queries: int, batch: int):
    """nprobe (and the shortlist) tuned again over every vector after an append; refuses below the floor."""
    if spec.kind == "flat":
        return spec, 1.0
    n = len(vectors)
    queries = _queries(rng, n, n_queries)
    q = np.ascontiguousarray(vectors[queries])
    truth = exact_neighbours_streamed(vectors, q, 11, batch)
    try:
        tuned, recall = tune(VectorIndex(vindex, spec, vectors), truth, q, floor, self_ids=queries)
    except GalclipError as err:
        raise GalclipError(
            f"the {m} index after the append: {err}; its lists were trained on the first stores: rebuild it with "
            "'galclip index STORE HEADS OUT --also ...' over every store"
        ) from err
    set_nprobe(vindex, tuned.nprobe)
    return tuned, recall
