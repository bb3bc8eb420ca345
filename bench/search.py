"""Search speed and quality: galclip's indexes against raw FAISS and exact search, one run.

    python bench/search.py [--sizes 200000,1000000,10000000] [--queries 500]

* Exact search over 200k x 128 through galclip's ``Index.nearest`` vs the same FAISS index
  called directly (goal: within 10%).
* For each larger size: clustered, L2-normalised 128-d vectors (a mixture of Gaussian clusters
  of varied widths — uniform noise would make IVF meaningless); the index galclip chooses for
  that size (``choose_spec``), its build time, queries/s and recall@10 against exact search,
  and the exact search's queries/s (goal at 10M: recall@10 >= 0.95 at >= 20x exact queries/s).
Writes bench/out/search.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def clustered(
    n: int, d: int = 128, n_clusters: int = 10000, seed: int = 0, chunk: int = 1_000_000, spread: float = 0.04
) -> np.ndarray:
    """(n, d) float32 unit vectors drawn around n_clusters centres with log-normal per-dimension spreads
    (median ``spread``; 0.04 gives neighbour cosines ~0.8, close to the demo's in-modal top hits)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.lognormal(np.log(spread), 0.5, n_clusters).astype(np.float32)
    out = np.empty((n, d), np.float32)
    for lo in range(0, n, chunk):
        m = min(chunk, n - lo)
        c = rng.integers(0, n_clusters, m)
        x = centres[c] + rng.standard_normal((m, d), dtype=np.float32) * spread[c, None]
        out[lo : lo + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def qps(fn, queries: np.ndarray, reps: int = 3) -> float:
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn(queries)
        best = min(best, time.perf_counter() - t)
    return len(queries) / best


def ivfpq_row(x: np.ndarray, q: np.ndarray, truth: np.ndarray, nlist: int, rng) -> dict:
    """IVF-PQ (64 sub-quantisers x 8 bits = 64 bytes/vector, 8x less memory than IVF-Flat): build time,
    and recall@10 / queries/s for nprobe 1..256."""
    import faiss

    t = time.perf_counter()
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(128), 128, nlist, 64, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(x[rng.choice(len(x), min(len(x), 40 * nlist), replace=False)])
    index.add(x)
    out: dict = {"build_s": time.perf_counter() - t, "bytes_per_vector": 64, "nprobe": {}}
    for nprobe in (1, 4, 16, 64, 256):
        index.nprobe = nprobe
        _, got = index.search(q, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)]))
        out["nprobe"][nprobe] = {"recall@10": recall, "qps": qps(lambda qq: index.search(qq, 10), q)}
        print(
            f"            IVF-PQ64 nprobe {nprobe:4d}: recall@10 {recall:.3f}  {out['nprobe'][nprobe]['qps']:9.0f} q/s",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200000,1000000,10000000")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--exact-max", type=int, default=250_000)
    ap.add_argument("--spread", type=float, default=0.04, help="median per-dimension cluster spread")
    ap.add_argument(
        "--pq",
        action="store_true",
        help="also measure IVF-PQ (64 bytes/vector) at each approximate size, as the alternative to IVF-Flat",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "search.json")
    args = ap.parse_args()

    import faiss

    from galclip.index.build import choose_spec, exact_neighbours, new_index, tune_nprobe
    from galclip.index.search import Index

    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    result: dict = {"faiss_threads": faiss.omp_get_max_threads(), "spread": args.spread, "sizes": {}}
    for n in (int(s) for s in args.sizes.split(",")):
        t = time.perf_counter()
        x = clustered(n, spread=args.spread)
        gen_s = time.perf_counter() - t
        rng = np.random.default_rng(1)
        q = x[rng.choice(n, args.queries, replace=False)] + 0.01 * rng.standard_normal(
            (args.queries, 128), dtype=np.float32
        )
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        row: dict = {"generate_s": gen_s}
        t = time.perf_counter()
        truth = exact_neighbours(x, q)
        row["exact_qps"] = args.queries / (time.perf_counter() - t)
        spec = choose_spec(n, args.exact_max)
        t = time.perf_counter()
        index = new_index(spec, 128)
        if spec.kind == "ivf":
            index.train(x[rng.choice(n, min(n, 40 * spec.nlist), replace=False)])
        index.add(x)
        row["build_s"] = time.perf_counter() - t
        row["index"] = {"kind": spec.kind, "nlist": spec.nlist}
        if spec.kind == "ivf":
            nprobe, recall = tune_nprobe(index, truth, q, 0.95)
            row["index"]["nprobe"] = nprobe
        else:
            recall = 1.0
        row["recall@10"] = recall
        row["index_qps"] = qps(lambda qq, index=index: index.search(qq, 10), q)
        row["speedup_vs_exact"] = row["index_qps"] / row["exact_qps"]
        if spec.kind == "flat":  # galclip's search wrapper vs FAISS called directly, same index
            loaded = Index(Path("."), {"n": n}, {"image": index}, {}, {})
            row["galclip_qps"] = qps(lambda qq, loaded=loaded: loaded.nearest(qq, "image", 10), q)
            row["galclip_over_raw_faiss"] = row["galclip_qps"] / row["index_qps"]
        if args.pq and spec.kind == "ivf":
            row["ivfpq"] = ivfpq_row(x, q, truth, spec.nlist, rng)
        result["sizes"][str(n)] = row
        print(
            f"{n:>10,d}  {spec.kind:<4} nlist {spec.nlist:<5} build {row['build_s']:6.1f} s  "
            f"recall@10 {recall:.3f}  {row['index_qps']:9.0f} q/s vs exact {row['exact_qps']:8.0f} q/s "
            f"({row['speedup_vs_exact']:.1f}x)"
            + (f" nprobe {row['index']['nprobe']}" if spec.kind == "ivf" else "")
            + (f"  galclip/raw {row['galclip_over_raw_faiss']:.3f}" if "galclip_qps" in row else ""),
            flush=True,
        )
        del x, index
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
