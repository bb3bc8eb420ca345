"""One modality's vector index: which FAISS index to build for N vectors within a memory budget, how to build and
tune it, and how to search it (filters, and an exact re-rank of a PQ shortlist read from the embeddings file).

Kinds, in order of preference:

* ``flat``: exact ``IndexFlatIP``, N x d x 4 bytes;
* ``ivf``: ``IndexIVFFlat``, the same bytes plus 8 per id and the centroids;
* ``ivfpq``: ``IndexIVFPQ`` with ``pq_m`` one-byte codes per vector (optionally behind an OPQ rotation), N x
  (pq_m + 8) bytes. PQ alone cannot reach a 0.95 recall floor (docs/benchmarks.md: 0.66-0.69), so its
  ``shortlist`` best candidates are re-scored exactly with the full vectors, read row by row from the index's
  ``{modality}.npy`` with ``os.pread`` (the page cache is the kernel's: the process's resident memory stays the
  index's).

Without a budget the choice is today's: exact up to ``exact_max`` vectors, IVF-Flat above.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from galclip.errors import GalclipError
from galclip.neighbours import drop_self

logger = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "ivfpq")
PQ_M = (64, 32, 16)  # sub-quantisers tried, most accurate first (each must divide d)
SHORTLISTS = (16, 32, 64, 128, 256, 512, 1024)  # PQ candidates re-ranked exactly, tried at k = 10
TUNED_K = 10  # recall@10 is what the floor is measured on
PROCESS_BYTES = 512 * 2**20  # the serving process itself (Python, FAISS, torch for uploads), counted in the budget
TUNING_MARGIN = 0.01  # tuned to floor + margin: 1,000 held-out queries measure recall@10 to about +-0.005
READ_THREADS = 32  # concurrent row reads for a re-rank (os.pread releases the GIL)
PARALLEL_READS_FROM = 64  # fewer rows are read in one thread
EXACT_SUBSET = 50_000  # a filter that keeps at most this many vectors is searched exactly over them


@dataclass(frozen=True)
class IndexSpec:
    """How one modality's index is built: "flat" (exact), "ivf" (IVF-Flat) or "ivfpq" (IVF-PQ, re-ranked).

    nlist: inverted lists; nprobe: lists probed per query; pq_m: PQ bytes per vector; pq_nbits: bits per PQ code
    (8, fewer for a small training set); opq: an OPQ rotation before PQ; shortlist: PQ candidates re-ranked
    exactly per query at k = 10 (scaled with k)."""

    kind: str
    nlist: int = 0
    nprobe: int = 0
    pq_m: int = 0
    pq_nbits: int = 8
    opq: bool = False
    shortlist: int = 0

    @classmethod
    def from_record(cls, record: dict) -> IndexSpec:
        """The spec an ``index.json`` modality record holds (records written before PQ hold kind, nlist, nprobe)."""
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})

    def describe(self) -> str:
        """A short human name: 'exact', 'IVF-Flat (nlist 4096, nprobe 8)', 'IVF-PQ64 + re-rank of 128 ...'."""
        if self.kind == "flat":
            return "exact (flat)"
        probe = f"nlist {self.nlist}" + (f", nprobe {self.nprobe}" if self.nprobe else "")
        if self.kind == "ivf":
            return f"IVF-Flat ({probe})"
        rerank = f", exact re-rank of {self.shortlist}" if self.shortlist else ""
        return f"{'OPQ+' if self.opq else ''}IVF-PQ{self.pq_m} ({probe}{rerank})"


def nlist_for(n: int, max_nlist: int = 4096) -> int:
    """nlist = 4·√N within [16, N/39] and at most ``max_nlist`` (k-means and assignment cost grow with it)."""
    return int(min(max(16, 4 * math.sqrt(n)), max(1, n // 39), max_nlist))


def choose_spec(n: int, exact_max: int, max_nlist: int = 4096) -> IndexSpec:
    """Without a budget: exact while N <= exact_max, else IVF-Flat."""
    if n <= exact_max:
        return IndexSpec("flat")
    return IndexSpec("ivf", nlist=nlist_for(n, max_nlist), nprobe=1)


def resident_bytes(spec: IndexSpec, n: int, d: int) -> int:
    """Bytes one modality's index of ``n`` d-dimensional vectors holds in memory once loaded."""
    if spec.kind == "flat":
        return n * d * 4
    centroids = spec.nlist * d * 4
    if spec.kind == "ivf":
        return n * (d * 4 + 8) + centroids
    codebooks = d * (2**spec.pq_nbits) * 4 + (d * d * 4 if spec.opq else 0)
    return n * (spec.pq_m + 8) + centroids + codebooks


def candidates(n: int, d: int, exact_max: int, budget: int | None, max_nlist: int = 4096) -> list[IndexSpec]:
    """The index kinds to try for ``n`` vectors, best first; with a ``budget`` (bytes for this modality's index)
    every kind that fits it, else only today's choice."""
    if budget is None:
        return [choose_spec(n, exact_max, max_nlist)]
    nlist = nlist_for(n, max_nlist)
    n_train = min(n, max(40 * nlist, 65536))
    nbits = int(min(8, max(1, math.floor(math.log2(max(2, n_train // 39))))))
    ladder = [IndexSpec("flat")] if n <= exact_max else []
    if n > 39 * 16:
        ladder.append(IndexSpec("ivf", nlist=nlist))
        for m in (m for m in PQ_M if d % m == 0 and m < d):
            ladder += [IndexSpec("ivfpq", nlist=nlist, pq_m=m, pq_nbits=nbits, opq=opq) for opq in (False, True)]
    elif n > exact_max:
        ladder.append(IndexSpec("flat"))  # too few vectors to train lists: exact is the only kind
    return [s for s in ladder if resident_bytes(s, n, d) <= budget]


def smallest(n: int, d: int, max_nlist: int = 4096) -> tuple[IndexSpec, int]:
    """The kind with the fewest resident bytes at ``n`` vectors, and those bytes (what a refused budget names)."""
    m = min(m for m in PQ_M if d % m == 0)
    spec = IndexSpec("ivfpq", nlist=nlist_for(n, max_nlist), pq_m=m)
    return spec, resident_bytes(spec, n, d)


def new_index(spec: IndexSpec, d: int):
    """An empty FAISS index of ``spec`` (inner product)."""
    import faiss

    if spec.kind == "flat":
        return faiss.IndexFlatIP(d)
    quantizer = faiss.IndexFlatIP(d)  # faiss's Python wrapper keeps it referenced by the IVF index
    if spec.kind == "ivf":
        return faiss.IndexIVFFlat(quantizer, d, spec.nlist, faiss.METRIC_INNER_PRODUCT)
    ivfpq = faiss.IndexIVFPQ(quantizer, d, spec.nlist, spec.pq_m, spec.pq_nbits, faiss.METRIC_INNER_PRODUCT)
    if not spec.opq:
        return ivfpq
    return faiss.IndexPreTransform(faiss.OPQMatrix(d, spec.pq_m), ivfpq)  # faiss's wrapper keeps both referenced


def ivf_part(index):
    """The IVF index inside ``index`` (through an OPQ wrapper), or None for a flat one."""
    import faiss

    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def set_nprobe(index, nprobe: int) -> None:
    ivf = ivf_part(index)
    if ivf is not None and nprobe:
        ivf.nprobe = min(int(nprobe), ivf.nlist)


def training_sample(spec: IndexSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted positions of the vectors the lists (and codebooks) are trained on."""
    return np.sort(
        rng.choice(n, size=min(n, max(40 * spec.nlist, 65536 if spec.kind == "ivfpq" else 50_000)), replace=False)
    )


def write_index(index, path: Path) -> None:
    """Write ``index`` to ``path`` through Python's file writes, streamed (a full disk is an OSError with its errno;
    faiss.write_index says only RuntimeError), without a second copy in memory."""
    import faiss

    with open(path, "wb") as f:
        writer = faiss.PyCallbackIOWriter(lambda b: f.write(b) or len(b))
        faiss.write_index(index, writer)
        del writer


class VectorFile:
    """Rows of an (n, d) float32 ``.npy`` file read with ``os.pread``, without mapping the file: the page cache is
    the kernel's, so re-ranking from it adds nothing to the process's resident memory.

    Many rows are read by ``READ_THREADS`` threads at once: a file beyond the page cache answers random reads from
    disk, and a deep queue of them costs about a quarter of the time of one after another (bench/rows.py)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            self.offset = f.tell()
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise GalclipError(f"{self.path}: not a C-ordered (n, d) float32 array")
        self.shape = shape
        self.row_bytes = shape[1] * 4
        self._fd = os.open(self.path, os.O_RDONLY)
        # made here, not on first use, so concurrent requests share one pool; its threads start on first submit
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="galclip-rows")

    def __len__(self) -> int:
        return int(self.shape[0])

    def _read_into(self, out: np.ndarray, slots: np.ndarray, rows: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        for j, i in zip(slots.tolist(), rows.tolist()):
            view[j * self.row_bytes : (j + 1) * self.row_bytes] = os.pread(
                self._fd, self.row_bytes, self.offset + i * self.row_bytes
            )

    def __getitem__(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), d) float32 rows ``ids`` (any order, repeats allowed)."""
        ids = np.asarray(ids, np.int64).ravel()
        out = np.empty((len(ids), self.shape[1]), np.float32)
        if not len(ids):
            return out
        if len(ids) < PARALLEL_READS_FROM:
            self._read_into(out, np.arange(len(ids)), ids)
            return out
        order = np.argsort(ids, kind="stable")  # file order: neighbouring rows share a disk read-ahead
        parts = np.array_split(order, READ_THREADS)
        for job in [self._pool.submit(self._read_into, out, part, ids[part]) for part in parts if len(part)]:
            job.result()
        return out

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:  # None too when __init__ failed before making it
            self._pool.shutdown(wait=True)
            self._pool = None
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()


def bitmap_selector(allowed: np.ndarray):
    """A FAISS IDSelectorBitmap over the (n,) bool ``allowed``; the packed bits are kept on the selector."""
    import faiss

    bits = np.packbits(np.asarray(allowed, bool), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    selector._galclip_bits = bits
    return selector


def search_params(index, nprobe: int = 0, selector=None):
    """FAISS search parameters for ``index`` (through an OPQ wrapper): nprobe and an id selector; None for none."""
    import faiss

    if ivf_part(index) is None:
        return faiss.SearchParameters(sel=selector) if selector is not None else None
    ivf = faiss.SearchParametersIVF(sel=selector, nprobe=int(nprobe or ivf_part(index).nprobe))
    if isinstance(index, faiss.IndexPreTransform):
        return faiss.SearchParametersPreTransform(index_params=ivf)
    return ivf


@dataclass
class VectorIndex:
    """One modality's loaded index: the FAISS index, its spec, and the exact vectors for re-ranks and exact subsets.

    vectors: ``ids -> (len(ids), d)`` float32 rows (a :class:`VectorFile`, or an array in memory at build)."""

    index: object
    spec: IndexSpec
    vectors: Callable[[np.ndarray], np.ndarray] | np.ndarray | VectorFile

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def shortlist_for(self, k: int) -> int:
        """PQ candidates re-ranked for top-``k`` (the tuned shortlist at k = 10, scaled with k)."""
        return max(k, math.ceil(self.spec.shortlist * max(k, TUNED_K) / TUNED_K))

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors(ids) if callable(self.vectors) else np.asarray(self.vectors[ids], np.float32)

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None, nprobe: int = 0, shortlist: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(m, d) unit queries -> (similarities (m, k), ids (m, k)), best first, id -1 where fewer than k exist.

        ``allowed``: (ntotal,) bool, the vectors a result may be (a filter, applied before the top k is cut): few
        enough are searched exactly over their own vectors, more through FAISS's id selector. ``nprobe`` and
        ``shortlist`` override the tuned ones (tuning)."""
        queries = np.ascontiguousarray(queries, np.float32)
        if allowed is not None:
            kept = np.flatnonzero(allowed)
            if len(kept) <= EXACT_SUBSET:
                return _exact_over(queries, self._rows(kept), kept, k)
        selector = None if allowed is None else bitmap_selector(allowed)
        nprobe = nprobe or self.spec.nprobe
        if self.spec.kind != "ivfpq":
            params = search_params(self.index, nprobe, selector)
            return self.index.search(queries, k, params=params) if params is not None else self.index.search(queries, k)
        depth = shortlist or self.shortlist_for(k)
        _, cand = self.index.search(queries, depth, params=search_params(self.index, nprobe, selector))
        return self.rerank(queries, cand, k)

    def rerank(self, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact inner products of each query with its candidate ids (m, s) (-1 = none): the top ``k``."""
        m = len(queries)
        sims = np.full((m, k), -np.inf, np.float32)
        ids = np.full((m, k), -1, np.int64)
        flat = np.unique(cand[cand >= 0])
        if not len(flat):
            return sims, ids
        rows = self._rows(flat)
        for q in range(m):
            c = cand[q][cand[q] >= 0]
            if not len(c):
                continue
            s = rows[np.searchsorted(flat, c)] @ queries[q]
            order = np.lexsort((c, -s))[:k]
            sims[q, : len(order)], ids[q, : len(order)] = s[order], c[order]
        return sims, ids


def _exact_over(queries: np.ndarray, rows: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    m = len(queries)
    sims = np.full((m, k), -np.inf, np.float32)
    out = np.full((m, k), -1, np.int64)
    if len(ids):
        s = queries @ rows.T
        take = min(k, len(ids))
        order = np.lexsort((np.broadcast_to(ids, s.shape), -s), axis=-1)[:, :take]
        sims[:, :take], out[:, :take] = np.take_along_axis(s, order, 1), ids[order]
    return sims, out


def recall(got: np.ndarray, truth: np.ndarray, self_ids: np.ndarray | None = None) -> float:
    """recall@k: the share of ``truth``'s ids (m, k[+1]) found in ``got`` (m, >= k); with ``self_ids`` each query's
    own id is dropped from both first (``truth`` then holds k + 1)."""
    if self_ids is not None:
        _, truth = drop_self(truth, truth, self_ids)
        _, got = drop_self(got, got, self_ids)
    k = truth.shape[1]
    return float(np.mean([len(set(t.tolist()) & set(g[:k].tolist())) / k for t, g in zip(truth, got)]))


def tune(
    vindex: VectorIndex, truth: np.ndarray, queries: np.ndarray, floor: float, self_ids: np.ndarray | None = None
) -> tuple[IndexSpec, float]:
    """The cheapest nprobe (and, for IVF-PQ, shortlist) whose recall@10 reaches ``floor`` plus ``TUNING_MARGIN`` (so
    that other queries still find the floor): (tuned spec, recall).

    ``truth``: exact top-10 ids (m, 10), or (m, 11) with ``self_ids``. Raises a GalclipError naming the best recall
    reached when no setting reaches the floor. IVF-PQ's cost is estimated as the PQ codes scanned plus 2 kB per
    re-ranked vector read."""
    spec = vindex.spec
    if spec.kind == "flat":
        return spec, 1.0
    target = min(1.0, floor + TUNING_MARGIN)
    extra = 0 if self_ids is None else 1
    nlist = spec.nlist
    best = (-1.0, None)
    chosen: tuple[float, IndexSpec, float] | None = None
    ceiling: list[float] = []  # the best recall reached at each nprobe: probing stops once it no longer rises
    nprobe = 1
    while True:
        nprobe = min(nprobe, nlist)
        if spec.kind == "ivf":
            _, got = vindex.search(queries, TUNED_K + extra, nprobe=nprobe)
            r = recall(got, truth, self_ids)
            ceiling.append(r)
            best = max(best, (r, replace(spec, nprobe=nprobe)), key=lambda t: t[0])
            if r >= target:
                return replace(spec, nprobe=nprobe), r
        else:
            _, cand = vindex.index.search(
                np.ascontiguousarray(queries, np.float32),
                SHORTLISTS[-1] + extra,
                params=search_params(vindex.index, nprobe),
            )
            for s in SHORTLISTS:
                _, got = vindex.rerank(queries, cand[:, : s + extra], TUNED_K + extra)
                r = recall(got, truth, self_ids)
                if s == SHORTLISTS[-1] or r >= target:
                    ceiling.append(r)
                trial = replace(spec, nprobe=nprobe, shortlist=s)
                best = max(best, (r, trial), key=lambda t: t[0])
                if r >= target:
                    cost = nprobe * vindex.ntotal / nlist * spec.pq_m + s * 2048
                    if chosen is None or cost < chosen[0]:
                        chosen = (cost, trial, r)
                    break
            if chosen is not None and (chosen[1].shortlist == SHORTLISTS[0] or chosen[1].nprobe < nprobe / 4):
                return chosen[1], chosen[2]  # probing more only costs more from here
        saturated = nprobe >= 8 and len(ceiling) >= 3 and ceiling[-1] - ceiling[-3] < 0.002 and chosen is None
        if nprobe == nlist or saturated:
            if chosen is not None:
                return chosen[1], chosen[2]
            raise GalclipError(
                f"{spec.describe()} reaches recall@10 {best[0]:.3f} < {target:.3f} (floor {floor} + margin) at best "
                f"({best[1].describe() if best[1] else spec.describe()})"
            )
        nprobe *= 2


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5GiB', '4000000000' -> bytes (K, M, G, T are powers of 1024)."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t)
    except ValueError:
        raise ValueError(f"{text!r} is not a size: write bytes, or a number with K, M, G or T (4G, 512M)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r}: a size must be positive")
    return int(value * scale)
