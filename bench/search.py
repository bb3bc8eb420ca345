"""Search speed and quality: galclip's indexes against raw FAISS and exact search, one run.

    python bench/search.py [--sizes 200000,1000000,10000000] [--queries 500]

* Exact search over 200k x 128 through galclip's ``Index.nearest`` vs the same FAISS index
  called directly (goal: within 10%).
* For each larger size: clustered, L2-normalised 128-d vectors (a mixture of Gaussian clusters
  of varied widths — uniform noise would make IVF meaningless); the index galclip chooses for
  that size (``choose_spec``), its build time, queries/s and recall@10 against exact search,
  and the exact search's queries/s (goal at 10M: recall@10 >= 0.95 at >= 20x exact queries/s).
Writes bench/out/search.json.

With a memory budget, at galaxy_search's scale (42,272,646 Legacy Survey galaxies)::

    python bench/search.py --sizes 42000000 --max-memory 4G --out FILE.json

For each size: clustered vectors (the demo's spread) written to disk in blocks, never all in memory, and 1,000
held-out queries from the same clusters; the exact top 10 of each by streaming over the file; then galclip's
index chosen within the budget (``galclip index --max-memory``'s code: candidates, build, tune), written as an
image-only galclip index folder (the vectors file hard-linked as its embeddings). Recorded: build time and peak
memory, the index's resident bytes against the budget, recall@10 on the held-out queries, single-query p50/p99 in
a fresh process that opens the folder as ``galclip serve`` does (and its peak RSS), ``galclip serve`` (uvicorn, on
127.0.0.1) with 8 clients: throughput and p99; and the same vectors and queries through autofaiss with the same
budget (its chosen index, recall, p50/p99, build time; killed after ``--autofaiss-timeout`` seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
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


def write_vectors(path: Path, n: int, n_queries: int, spread: float, seed: int = 0, block: int = 1_000_000):
    """Write n clustered unit vectors to ``path`` (.npy) block by block; return the (n_queries, 128) held-out
    queries, drawn from the same clusters after them (never indexed)."""
    rng = np.random.default_rng(seed)
    d, n_clusters = 128, 10000
    centres = rng.normal(size=(n_clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spreads = rng.lognormal(np.log(spread), 0.5, n_clusters).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        c = rng.integers(0, n_clusters, m)
        x = centres[c] + rng.standard_normal((m, d), dtype=np.float32) * spreads[c, None]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for lo in range(0, n, block):
        out[lo : lo + block] = draw(min(block, n - lo))
        out.flush()
    del out
    return draw(n_queries)


def vm_kb(key: str, pid: str = "self") -> int:
    """One field of /proc/PID/status, in kB (VmHWM: peak resident; RssAnon; RssFile)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def peak_anon_sampler():
    """Start a thread sampling this process's anonymous resident memory (RssAnon, MiB; a memory map's file pages are
    the page cache's); returns a function giving the peak so far."""
    import threading

    peak = [0.0]

    def anon() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024

    def loop():
        while True:
            peak[0] = max(peak[0], anon())
            time.sleep(0.2)

    threading.Thread(target=loop, daemon=True).start()
    return lambda: max(peak[0], anon())


def galclip_build(vectors: str, folder: str, max_memory: int, floor: float, seed: int) -> dict:
    """In a child process: galclip's index within ``max_memory`` over the vectors file, as an image-only galclip
    index folder (per-row arrays: row, targetid, split, as an index of unlabelled galaxies holds).
    Returns the choice, build seconds and peak memory."""
    import faiss

    from galclip.index.build import _budgets, _build_modality
    from galclip.index.format import FORMAT, ROWS_FILE, write_sidecar
    from galclip.index.vectors import candidates, resident_bytes, write_index

    peak_anon = peak_anon_sampler()
    t0 = time.perf_counter()
    x = np.load(vectors, mmap_mode="r")
    n = len(x)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {
        "row": np.arange(n, dtype=np.int64),
        "targetid": np.arange(n, dtype=np.int64) + 39627000000000000,
        "split": np.ones(n, np.uint8),
        "spectrum_pos": np.zeros(0, np.int64),  # image-only: no labels (as for the survey's unlabelled millions)
    }
    budget = _budgets(max_memory, {"image": n}, rows)["image"]
    specs = candidates(n, 128, 250_000, budget)
    if not specs:
        return {"refused": f"no index kind fits {budget} bytes", "budget_for_index": budget}
    index, spec, recall = _build_modality("image", x, specs, np.random.default_rng(seed), floor, 1000, 1 << 20, budget)
    build_s = time.perf_counter() - t0
    write_index(index, folder / "image.faiss")
    del index
    if not (folder / "image.npy").exists():
        os.link(vectors, folder / "image.npy")
    np.savez(folder / ROWS_FILE, **rows)
    record = {"file": "image.faiss", "embeddings": "image.npy", **asdict(spec), "recall@10": recall, "ntotal": n}
    sidecar = {
        "format": FORMAT,
        "n": n,
        "dim": 128,
        "indexes": {"image": record},
        "store": "",
        "heads": "",
        "heads_sha256": "",
        "max_memory": max_memory,
    }
    write_sidecar(folder, sidecar)
    return {
        "index_kind": spec.describe(),
        "spec": asdict(spec),
        "tuned_recall_at_10": recall,
        "resident_bytes": resident_bytes(spec, n, 128),
        "rows_bytes": int(sum(v.nbytes for v in rows.values())),
        "budget_for_index": budget,
        "build_s": build_s,
        "build_peak_anon_mb": peak_anon(),
        "build_peak_rss_mb_with_mapped_file": vm_kb("VmHWM") / 1024,
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def timed_queries(search, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Each query alone, in order: (ids (m, k), milliseconds (m,))."""
    ids, ms = [], []
    for q in queries:
        t = time.perf_counter()
        got = search(q[None, :], k)
        ms.append((time.perf_counter() - t) * 1e3)
        ids.append(got[0])
    return np.array(ids), np.array(ms)


def galclip_queries(folder: str, queries: str, truth: str) -> dict:
    """In a fresh child process: open the folder as the service does, answer every held-out query alone; recall,
    p50/p99 and the process's peak RSS (nothing of the vectors file is mapped: the re-rank reads rows with pread)."""
    from galclip.index.search import open_index

    index = open_index(folder)
    q, t = np.load(queries), np.load(truth)
    index.nearest(q[:20], "image", 10)  # warm the page cache for the index's own pages
    ids, ms = timed_queries(lambda v, k: index.nearest(v, "image", k)[1], q)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(t, ids)]))
    return {
        "recall_at_10": recall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "peak_rss_bytes": vm_kb("VmHWM")
        * 1024,  # the kernel's high-water mark of this process (ru_maxrss survives exec)
        "rss_file_bytes": vm_kb("RssFile") * 1024,
    }


def autofaiss_run(vectors: str, queries: str, truth: str, workdir: str, max_memory: str) -> dict:
    """In a child process: autofaiss.build_index over the same vectors with the same budget, then every held-out
    query alone through the index it chose, with the search parameters it tuned."""
    import functools

    import faiss
    from autofaiss import build_index

    # autofaiss 2.18 writes its metrics with json.dump, which refuses NumPy 2's float32: let it write floats
    json.dump = functools.partial(json.dump, default=float)
    # and builds OPQ with OPQMatrix(d, M=..., d2=...), keywords faiss 1.15's constructor no longer takes
    opq = faiss.OPQMatrix
    faiss.OPQMatrix = lambda d=0, M=1, d2=-1: opq(d, M, d2)
    peak_anon = peak_anon_sampler()
    work = Path(workdir)
    emb = work / "embeddings"
    emb.mkdir(parents=True, exist_ok=True)
    if not (emb / "vectors.npy").exists():
        os.link(vectors, emb / "vectors.npy")
    t0 = time.perf_counter()
    _, infos = build_index(
        embeddings=str(emb),
        index_path=str(work / "knn.index"),
        index_infos_path=str(work / "infos.json"),
        max_index_memory_usage=max_memory,
        current_memory_available="16G",
        metric_type="ip",
        nb_cores=os.cpu_count(),
        save_on_disk=True,
        verbose=30,
    )
    build_s = time.perf_counter() - t0
    index = faiss.read_index(str(work / "knn.index"))
    params = (infos or {}).get("index_param") or json.loads((work / "infos.json").read_text()).get("index_param")
    if params:
        faiss.ParameterSpace().set_index_parameters(index, params)
    q, t = np.load(queries), np.load(truth)
    ids, ms = timed_queries(lambda v, k: index.search(v, k)[1], q)
    return {
        "index_kind": (infos or {}).get("index_key") or json.loads((work / "infos.json").read_text()).get("index_key"),
        "index_param": params,
        "recall_at_10": float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(t, ids)])),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "build_s": build_s,
        "build_peak_anon_mb": peak_anon(),
        "resident_bytes": int(os.path.getsize(work / "knn.index")),
    }


def in_child(fn: str, timeout: float, *args) -> dict:
    """Run ``fn(*args)`` of this file in a fresh interpreter; its JSON result, or {"failed"/"timed_out": ...}."""
    import subprocess
    import sys

    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import search as b; "
        f"print('RESULT ' + json.dumps(b.{fn}(*{list(args)!r}), default=float))"
    )
    t = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"timed_out": f"not finished after {timeout:.0f} s (killed)", "seconds": time.perf_counter() - t}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"failed": done.stderr[-1500:], "seconds": time.perf_counter() - t}
    return json.loads(lines[-1][len("RESULT ") :])


def serve_load(folder: Path, queries: int, clients: int = 8, max_requests: int = 2000, max_seconds: float = 60) -> dict:
    """``galclip serve``'s app (uvicorn, 127.0.0.1) over the folder, ``clients`` keep-alive clients searching by
    targetid (k = 10, image to image): throughput, p50/p99, and the server's peak RSS."""
    from serve import Server, load  # bench/serve.py

    ids = np.random.default_rng(2).integers(0, queries, 500) + 39627000000000000
    paths = [f"/api/search?targetid={t}&query=image&target=image&k=10" for t in ids]
    with Server(folder, survey=False) as server:
        load(server.port, paths[:16], 1, 16, 30)  # warm-up
        result = load(server.port, paths, clients, max_requests, max_seconds)
        result["server_peak_rss_bytes"] = vm_kb("VmHWM", str(server.proc.pid)) * 1024
    return result


def budget_run(n: int, args) -> dict:
    """Everything recorded at one size within ``--max-memory`` (see the module's docstring)."""
    from galclip.index.build import exact_neighbours_streamed
    from galclip.index.vectors import parse_size

    work = args.workdir / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    vectors = work / "vectors.npy"
    row: dict = {"n": n, "max_memory_bytes": parse_size(args.max_memory)}
    t = time.perf_counter()
    q = write_vectors(vectors, n, args.queries, args.spread)
    np.save(work / "queries.npy", q)
    row["write_vectors_s"] = time.perf_counter() - t
    print(f"{n:,} vectors written in {row['write_vectors_s']:.0f} s", flush=True)
    t = time.perf_counter()
    truth = exact_neighbours_streamed(np.load(vectors, mmap_mode="r"), q, 10, block=1 << 20)
    np.save(work / "truth.npy", truth)
    row["exact_truth_s"] = time.perf_counter() - t
    print(f"exact top 10 of {args.queries} queries streamed in {row['exact_truth_s']:.0f} s", flush=True)
    build = in_child(
        "galclip_build", 6 * 3600, str(vectors), str(work / "index"), row["max_memory_bytes"], args.recall_floor, 0
    )
    row["galclip"] = build
    print("galclip build:", json.dumps(build, default=float), flush=True)
    if "index_kind" in build:
        row["galclip"].update(
            in_child("galclip_queries", 3600, str(work / "index"), str(work / "queries.npy"), str(work / "truth.npy"))
        )
        row["galclip"]["serve_8_clients"] = serve_load(work / "index", n)
        print("galclip search:", json.dumps(row["galclip"], default=float), flush=True)
    if args.autofaiss_timeout > 0:
        row["autofaiss"] = in_child(
            "autofaiss_run",
            args.autofaiss_timeout,
            str(vectors),
            str(work / "queries.npy"),
            str(work / "truth.npy"),
            str(work / "autofaiss"),
            args.max_memory,
        )
        print("autofaiss:", json.dumps(row["autofaiss"], default=float)[:2000], flush=True)
    g = row["galclip"]
    if "recall_at_10" in g:
        a = row.get("autofaiss", {})
        row["goals"] = {
            "recall_at_10 >= 0.95": g["recall_at_10"] >= 0.95,
            "serving peak RSS <= budget": g["peak_rss_bytes"] <= row["max_memory_bytes"],
            "single-query p99 <= 50 ms": g["p99_ms"] <= 50,
            "recall >= autofaiss": ("recall_at_10" in a and g["recall_at_10"] >= a["recall_at_10"]) or None,
            "p99 <= autofaiss": ("p99_ms" in a and g["p99_ms"] <= a["p99_ms"]) or None,
        }
    if not args.keep:
        import shutil

        shutil.rmtree(work)
    return row


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
    ap.add_argument("--max-memory", help="a memory budget (e.g. 4G): galclip's index within it, against autofaiss's")
    ap.add_argument("--recall-floor", type=float, default=0.95)
    ap.add_argument("--autofaiss-timeout", type=float, default=1800, help="seconds; 0 skips autofaiss")
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out" / "vectors")
    ap.add_argument("--keep", action="store_true", help="keep the vectors and indexes written under --workdir")
    args = ap.parse_args()
    if args.max_memory:
        if args.queries == 500:
            args.queries = 1000
        result = {"max_memory": args.max_memory, "spread": args.spread, "sizes": {}}
        for n in (int(s) for s in args.sizes.split(",")):
            result["sizes"][str(n)] = budget_run(n, args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2, default=float))
        print(f"-> {args.out}")
        return

    import faiss

    from galclip.index.build import exact_neighbours, tune_nprobe
    from galclip.index.search import Index
    from galclip.index.vectors import VectorIndex, choose_spec, new_index

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
            loaded = Index(Path("."), {"n": n}, {"image": VectorIndex(index, spec, x)}, {}, {})
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
