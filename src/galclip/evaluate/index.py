"""Similarity-search indexes over the whole store: one FAISS index per modality, chosen by size.

Up to ``exact_max`` vectors: exact ``IndexFlatIP``. Above: ``IndexIVFFlat`` (inner product)
with nlist ≈ 4·√N lists trained on a sample, and the smallest nprobe whose recall@10 against
exact search, measured on held-out queries at build time, reaches the recall floor; an index
that cannot reach the floor is refused. Vectors are the heads' embeddings, L2-normalised
(report eq. 5), added in batches streamed from the store, so the store never has to fit in
memory at once. Everything is written atomically beside a JSON sidecar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from galclip.atomic import atomic_path, atomic_write_text
from galclip.errors import GalclipError
from galclip.evaluate.search import l2_normalise
from galclip.store import FeatureStore

logger = logging.getLogger(__name__)

MODALITIES = ("image", "spectrum")
SIDECAR = "index.json"
ROWS_FILE = "rows.npz"


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
    """The same index on all GPUs when faiss-gpu and a CUDA device are present, else unchanged."""
    import faiss

    if hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def to_cpu(index):
    import faiss

    return faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__ else index


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact inner-product top-k ids (m, k) by brute force, without copying ``vectors`` into an index."""
    import faiss

    _, ids = faiss.knn(np.ascontiguousarray(queries, np.float32), np.ascontiguousarray(vectors, np.float32), k,
                       metric=faiss.METRIC_INNER_PRODUCT)
    return ids


def recall_at_k(index, truth: np.ndarray, queries: np.ndarray, self_ids: np.ndarray | None = None) -> float:
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
    scores = []
    for t, g, me in zip(truth, got, self_ids):
        t_other = [i for i in t if i != me][:k]
        g_other = [i for i in g if i != me][:k]
        scores.append(len(set(t_other) & set(g_other)) / k)
    return float(np.mean(scores))


def tune_nprobe(index, truth: np.ndarray, queries: np.ndarray, floor: float,
                self_ids: np.ndarray | None = None) -> tuple[int, float]:
    """Smallest power-of-two nprobe whose recall reaches ``floor``: (nprobe, recall); raises if none does."""
    nprobe = 1
    while True:
        index.nprobe = min(nprobe, index.nlist)
        recall = recall_at_k(index, truth, queries, self_ids)
        if recall >= floor:
            return index.nprobe, recall
        if index.nprobe == index.nlist:
            raise GalclipError(f"the IVF index reaches recall@10 {recall:.3f} < floor {floor} even with "
                               "every list probed; lower --recall-floor or raise --exact-max to keep exact search")
        nprobe *= 2


def embed_store(store: FeatureStore, heads, rows: np.ndarray, batch: int = 65536):
    """Yield (first position, image (b, 128), spectrum (b, 128)) L2-normalised, streamed by row blocks."""
    for lo in range(0, len(rows), batch):
        sel = rows[lo:lo + batch]
        a, b = int(sel[0]), int(sel[-1]) + 1  # complete shards are contiguous blocks of rows
        fi = store.group["image_features"][a:b][sel - a]
        fs = store.group["spectrum_features"][a:b][sel - a]
        zi, zs = heads.embed(fi, fs)
        yield lo, l2_normalise(zi), l2_normalise(zs)


def build_indexes(store_path: str | Path, heads_path: str | Path, out_dir: str | Path, exact_max: int = 250_000,
                  recall_floor: float = 0.95, n_queries: int = 1000, batch: int = 65536, seed: int = 0,
                  allow_partial: bool = False) -> dict:
    """Embed every pair and write ``image.faiss``, ``spectrum.faiss``, ``rows.npz`` and ``index.json``."""
    import faiss

    from galclip.heads.train import load_heads

    t0 = time.perf_counter()
    store = FeatureStore.open(store_path)
    heads, ckpt = load_heads(heads_path, store)
    rows = np.flatnonzero(store.require_complete(allow_partial))
    n = len(rows)
    spec = choose_spec(n, exact_max)
    d = heads.image.sizes[-1]
    # embeddings are kept (n x 128 each, ~100 MB per 200k) for query look-ups and recall checks
    emb = {m: np.empty((n, d), np.float32) for m in MODALITIES}
    for lo, zi, zs in embed_store(store, heads, rows, batch):
        emb["image"][lo:lo + len(zi)], emb["spectrum"][lo:lo + len(zs)] = zi, zs
    rng = np.random.default_rng(seed)
    queries = rng.choice(n, size=min(n_queries, n), replace=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = {}
    for m in MODALITIES:
        index = on_gpu_if_available(new_index(spec, d))
        if spec.kind == "ivf":
            sample = rng.choice(n, size=min(n, max(40 * spec.nlist, 50_000)), replace=False)
            index.train(emb[m][np.sort(sample)])
        for lo in range(0, n, batch):
            index.add(emb[m][lo:lo + batch])
        q = emb[m][queries]
        if spec.kind == "ivf":
            # queries are rows of the index: each one's own row is left out of truth and results
            nprobe, recall = tune_nprobe(index, exact_neighbours(emb[m], q, 11), q, recall_floor, self_ids=queries)
        else:
            nprobe, recall = 0, 1.0
        with atomic_path(out / f"{m}.faiss") as tmp:
            faiss.write_index(to_cpu(index), str(tmp))
        records[m] = {"file": f"{m}.faiss", **asdict(spec), "nprobe": nprobe, "recall@10": recall, "ntotal": int(index.ntotal)}
        logger.info("%s index: %s over %d vectors, recall@10 %.3f (nprobe %d)", m, spec.kind, n, recall, nprobe)
    heads_file = Path(heads_path) / "heads.pt" if Path(heads_path).is_dir() else Path(heads_path)
    with atomic_path(out / ROWS_FILE) as tmp:  # the temporary name keeps .npz, so np.savez adds nothing
        np.savez(tmp, row=rows, targetid=store.read_meta("targetid")[rows], split=store.read_meta("split")[rows],
                 redshift=store.read_meta("label_redshift")[rows], log_mstar=store.read_meta("label_log_mstar")[rows],
                 emb_image=emb["image"], emb_spectrum=emb["spectrum"])
    sidecar = {
        "format": "galclip-index/1", "n": n, "dim": d, "indexes": records, "recall_floor": recall_floor,
        "store": str(Path(store_path).resolve()), "store_fingerprint": store.fingerprint(),
        "heads": str(heads_file.resolve()), "heads_sha256": hashlib.sha256(heads_file.read_bytes()).hexdigest(),
        "build_seconds": time.perf_counter() - t0, "exact_max": exact_max,
    }
    atomic_write_text(json.dumps(sidecar, indent=2), out / SIDECAR)
    return sidecar


@dataclass
class LoadedIndex:
    """An index directory: sidecar, per-modality FAISS indexes, and per-row arrays."""

    path: Path
    sidecar: dict
    indexes: dict
    rows: dict

    def position(self, targetid: int) -> int:
        hit = np.flatnonzero(self.rows["targetid"] == targetid)
        if hit.size == 0:
            raise GalclipError(f"targetid {targetid} is not in the index at {self.path} ({self.sidecar['n']} galaxies)")
        return int(hit[0])

    def search(self, query_vectors: np.ndarray, target: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(m, 128) L2-normalised queries -> (similarities (m, k), positions (m, k))."""
        if target not in MODALITIES:
            raise GalclipError(f"target must be one of {MODALITIES}, got {target!r}")
        sims, ids = self.indexes[target].search(np.ascontiguousarray(query_vectors, np.float32), k)
        return sims, ids


def load_index(path: str | Path) -> LoadedIndex:
    """Open an index directory written by ``build_indexes``."""
    import faiss

    path = Path(path)
    if not (path / SIDECAR).exists():
        raise GalclipError(f"{path}: no {SIDECAR}; build an index with 'galclip index STORE HEADS {path}'")
    sidecar = json.loads((path / SIDECAR).read_text())
    indexes = {}
    for m, rec in sidecar["indexes"].items():
        index = faiss.read_index(str(path / rec["file"]))
        if rec["kind"] == "ivf":
            faiss.extract_index_ivf(index).nprobe = rec["nprobe"]
        indexes[m] = on_gpu_if_available(index)
    with np.load(path / ROWS_FILE) as z:
        rows = {k: z[k] for k in z.files}
    return LoadedIndex(path, sidecar, indexes, rows)


def embed_new_pair(loaded: LoadedIndex, data: str | Path, targetid: int, device: str = "auto") -> dict[str, np.ndarray]:
    """Embed one pair of a survey file that is not (necessarily) in the store, as the index was built:
    the store's encoders and preprocessing, then the index's heads. Returns {"image": (1, 128), "spectrum": (1, 128)},
    L2-normalised. Refuses when the heads file no longer matches the one the index was built from."""
    import dataclasses

    from galclip.config import ExtractConfig
    from galclip.errors import InputError
    from galclip.extract.run import Encoders
    from galclip.extract.validate import REASONS, bad_row_codes
    from galclip.data.survey import SurveyReader
    from galclip.heads.train import load_heads
    from galclip.provenance import resolve_device

    heads_file = Path(loaded.sidecar["heads"])
    if not heads_file.exists():
        raise GalclipError(f"{heads_file}: the heads this index was built from are gone; rebuild the index with 'galclip index'")
    if hashlib.sha256(heads_file.read_bytes()).hexdigest() != loaded.sidecar["heads_sha256"]:
        raise GalclipError(f"{loaded.path}: was built from other heads than the current {heads_file} (SHA-256 differs); "
                           "rebuild the index with 'galclip index' so new queries land in the same space")
    store = FeatureStore.open(loaded.sidecar["store"])
    known = {f.name for f in dataclasses.fields(ExtractConfig)}
    config = ExtractConfig(**{k: v for k, v in store.provenance["config"].items() if k in known})
    config = dataclasses.replace(config, variants=0, spectrum_variants=0, device=device)
    with SurveyReader(data) as reader:
        ids = reader.targetids()
        hit = np.flatnonzero(ids == targetid)
        if hit.size == 0:
            raise InputError(f"{data}: no row with targetid {targetid}")
        row = int(hit[0])
        batch = reader.read(row, row + 1)
        code = int(bad_row_codes(batch.image, batch.spectrum)[0])
        if code:
            raise InputError(f"{reader.locate(row)}: targetid {targetid}: {REASONS[code]}; it cannot be embedded")
    import torch

    dev = resolve_device(device)
    feats = Encoders(config, dev)(torch.from_numpy(batch.image), torch.from_numpy(batch.spectrum), batch.targetid)
    heads, _ = load_heads(heads_file, store)
    zi, zs = heads.embed(feats["image_features"], feats["spectrum_features"])
    return {"image": l2_normalise(zi), "spectrum": l2_normalise(zs)}
