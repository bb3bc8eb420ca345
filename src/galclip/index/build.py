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
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from galclip.atomic import atomic_dir, reserve_space
from galclip.errors import GalclipError
from galclip.heads.checkpoint import checkpoint_file, load_heads
from galclip.index.embed import embed_store
from galclip.index.format import FILES as INDEX_FILES
from galclip.index.format import FORMAT, MAP_FILE, ROWS_FILE, SIDECAR, file_manifest, write_sidecar
from galclip.neighbours import drop_self
from galclip.outputs import check_output_dir, foreign_entries, write_marker
from galclip.progress import progress as progress_bar
from galclip.provenance import sha256_file
from galclip.store import FeatureStore
from galclip.vocabulary import MODALITIES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSpec:
    """How one modality's index is built: exact ("flat") or approximate ("ivf")."""

    kind: str
    nlist: int = 0
    nprobe: int = 0


def choose_spec(n: int, exact_max: int, max_nlist: int = 4096) -> IndexSpec:
    """Exact search while N <= exact_max; else IVF-Flat with nlist = 4·√N, within [16, N/39] and
    at most ``max_nlist`` (k-means training and assignment cost grow with nlist)."""
    if n <= exact_max:
        return IndexSpec("flat")
    nlist = int(min(max(16, 4 * math.sqrt(n)), max(1, n // 39), max_nlist))
    return IndexSpec("ivf", nlist=nlist, nprobe=1)


def new_index(spec: IndexSpec, d: int):
    import faiss

    if spec.kind == "flat":
        return faiss.IndexFlatIP(d)
    quantizer = faiss.IndexFlatIP(d)  # faiss's Python wrapper keeps it referenced by the IVF index
    return faiss.IndexIVFFlat(quantizer, d, spec.nlist, faiss.METRIC_INNER_PRODUCT)


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
) -> dict:
    """Embed every pair and write ``image.faiss``, ``spectrum.faiss``, ``image.npy``, ``spectrum.npy``
    (the (N, 128) embeddings), ``rows.npz`` and ``index.json`` into ``out_dir``; with ``embedding_map``
    also ``map.npy``, the (N, 2) UMAP map of the image embeddings (fitted on ``map_max_points``).

    Streams: features are read ``batch`` rows at a time and the embeddings go to memory-mapped files,
    so memory holds one feature block plus the FAISS indexes themselves (N x 128 x 4 bytes each). The
    folder is built under a temporary name and swapped in whole: a crash leaves the previous index. ``out_dir``
    must be new, empty or an earlier index folder; with ``overwrite`` any folder, whose other files are kept.
    """
    import faiss

    t0 = time.perf_counter()
    out = Path(out_dir)
    keep_others = _foreign_files(out, overwrite)
    store = FeatureStore.open(store_path)
    heads, ckpt = load_heads(heads_path, store)
    rows = np.flatnonzero(store.require_complete(allow_partial))
    n = len(rows)
    if n == 0:
        raise GalclipError(f"{store_path}: no readable pairs to index")
    spec = choose_spec(n, exact_max)
    d = heads.image.sizes[-1]
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(n, size=min(n_queries, n), replace=False))
    records = {}
    with atomic_dir(out, merge_last=SIDECAR if keep_others else None) as tmp:  # a failed write names ``out``
        emb = {}
        for m in MODALITIES:
            emb[m] = np.lib.format.open_memmap(tmp / f"{m}.npy", mode="w+", dtype=np.float32, shape=(n, d))
            reserve_space(tmp / f"{m}.npy", name=out)  # a full disk is an ENOSPC now, not a SIGBUS in the map later
        with progress_bar(n, "embed", "pair", enabled=progress) as bar:
            for lo, z in embed_store(store, heads, rows, batch):
                for m in MODALITIES:
                    emb[m][lo : lo + len(z[m])] = z[m]
                bar.update(len(z["image"]))
        for m in MODALITIES:
            emb[m].flush()
            index = on_gpu_if_available(new_index(spec, d))
            if spec.kind == "ivf":
                sample = np.sort(rng.choice(n, size=min(n, max(40 * spec.nlist, 50_000)), replace=False))
                index.train(np.ascontiguousarray(emb[m][sample]))
            for lo in range(0, n, batch):
                index.add(np.ascontiguousarray(emb[m][lo : lo + batch]))
            index = to_cpu(index)  # tuned, saved and searched on the CPU
            if spec.kind == "ivf":
                q = np.ascontiguousarray(emb[m][queries])
                # queries are rows of the index: each one's own row is left out of truth and results
                truth = exact_neighbours_streamed(emb[m], q, 11, batch)
                nprobe, recall = tune_nprobe(index, truth, q, recall_floor, self_ids=queries)
            else:
                nprobe, recall = 0, 1.0
            # through Python's file writes: a full disk is an OSError with its errno (faiss.write_index says only
            # RuntimeError)
            with open(tmp / f"{m}.faiss", "wb") as f:
                f.write(memoryview(faiss.serialize_index(index)))
            records[m] = {
                "file": f"{m}.faiss",
                "embeddings": f"{m}.npy",
                **asdict(spec),
                "nprobe": nprobe,
                "recall@10": recall,
                "ntotal": int(index.ntotal),
            }
            logger.info("%s index: %s over %d vectors, recall@10 %.3f (nprobe %d)", m, spec.kind, n, recall, nprobe)
            del index
        map_info = None
        if embedding_map:
            from galclip.index.embedding_map import fit_umap

            t_map = time.perf_counter()
            np.save(tmp / MAP_FILE, fit_umap(emb["image"], map_max_points, seed))
            map_info = {
                "file": MAP_FILE,
                "of": "image",
                "max_points": map_max_points,
                "seconds": time.perf_counter() - t_map,
            }
        del emb
        heads_file = checkpoint_file(heads_path)
        positions = store.positions()
        np.savez(
            tmp / ROWS_FILE,
            row=rows,
            targetid=store.read_meta("targetid")[rows],
            split=store.split()[rows],
            **{name: values[rows] for name, values in store.labels().items()},
            **({} if positions is None else {"ra": positions[0][rows], "dec": positions[1][rows]}),
        )
        sidecar = {
            "format": FORMAT,
            "n": n,
            "dim": d,
            "indexes": records,
            "recall_floor": recall_floor,
            "store": os.path.relpath(Path(store_path).resolve(), out.resolve()),
            "store_absolute": str(Path(store_path).resolve()),
            "store_fingerprint": store.fingerprint(),
            "heads": os.path.relpath(heads_file.resolve(), out.resolve()),
            "heads_absolute": str(heads_file.resolve()),
            "heads_sha256": sha256_file(heads_file),
            "build_seconds": time.perf_counter() - t0,
            "exact_max": exact_max,
            "map": map_info,
            "files": file_manifest(tmp),
        }
        write_sidecar(tmp, sidecar)
        write_marker(tmp, "index")
    return sidecar
