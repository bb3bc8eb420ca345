"""The search service under load: a bounded load generator against a real ``galclip serve`` on 127.0.0.1.

    python bench/serve.py [--index galclip-demo/index] [--big 200000] [--requests 400] [--seconds 20]

The server runs in its own process (uvicorn, as ``galclip serve`` starts it); the clients are threads
with keep-alive connections. Every level is bounded by a request count and a time limit, and only
127.0.0.1 is ever contacted. Measured, each against a baseline in the same run:

1. over the demo index: search requests/s and p50/p99 latency at 1, 8 and 64 concurrent clients;
   thumbnails p50/p99 cold (first request of each) and warm; a whole results page (one search plus
   k thumbnails and k spectra, fetched by 8 connections as a browser does) warm;
2. over a 200,000-vector exact index: the service's search throughput with 8 clients against bare
   FAISS answering the same single-vector queries from 8 threads (goal: >= 0.5x).
Writes bench/out/serve.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # never anything else


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``python bench/serve.py --serve INDEX --port P`` in a child process, for the duration of a ``with``."""

    def __init__(self, index: Path, survey: bool = True):
        self.port = free_port()
        cmd = [sys.executable, __file__, "--serve", str(index), "--port", str(self.port)] + (
            [] if survey else ["--no-survey"]
        )
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def __enter__(self) -> Server:
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server stopped: {self.proc.stderr.read()[-2000:]}")
            try:
                if get(self.port, "/api/health")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start in 120 s")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection(HOST, port, timeout=60)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    if own:
        conn.close()
    return response.status, body


def load(port: int, paths: list[str], clients: int, max_requests: int, max_seconds: float) -> dict:
    """``clients`` threads, each with one keep-alive connection, share ``paths`` round-robin until
    ``max_requests`` are answered or ``max_seconds`` pass. Returns requests/s and latency percentiles (ms)."""
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(max_requests))
    stop_at = time.perf_counter() + max_seconds
    failures = []

    def client() -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        while time.perf_counter() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t = time.perf_counter()
            status, _ = get(port, paths[i % len(paths)], conn)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                if status != 200:
                    failures.append(status)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1e3
    return {
        "clients": clients,
        "requests": len(ms),
        "seconds": wall,
        "requests_per_s": len(ms) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "failures": len(failures),
    }


def results_page(port: int, targetid: int, k: int) -> float:
    """Seconds for one results page as the browser loads it: the search, then k thumbnails and k spectra
    (plus the query's own) over 8 connections."""
    t = time.perf_counter()
    status, body = get(port, f"/api/search?targetid={targetid}&query=image&target=spectrum&k={k}")
    assert status == 200, body[:200]
    ids = [targetid] + [n["targetid"] for n in json.loads(body)["neighbours"]]
    paths = [f"/api/image/{i}.png" for i in ids] + [f"/api/spectrum/{i}?bins=160" for i in ids]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda p: get(port, p)[0], paths))
    assert all(s == 200 for s in statuses)
    return time.perf_counter() - t


def synthetic_index(folder: Path, n: int, seed: int = 0) -> Path:
    """An index folder of n clustered unit vectors per modality, in galclip's layout (no store, no heads)."""
    import faiss

    sys.path.insert(0, str(Path(__file__).parent))
    from search import clustered  # bench/search.py

    from galclip.index.format import FORMAT, ROWS_FILE, SIDECAR

    folder.mkdir(parents=True, exist_ok=True)
    x = clustered(n, seed=seed)
    records = {}
    for m in ("image", "spectrum"):
        np.save(folder / f"{m}.npy", x)
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        faiss.write_index(index, str(folder / f"{m}.faiss"))
        records[m] = {
            "file": f"{m}.faiss",
            "embeddings": f"{m}.npy",
            "kind": "flat",
            "nlist": 0,
            "nprobe": 0,
            "recall@10": 1.0,
            "ntotal": n,
        }
    rng = np.random.default_rng(seed)
    np.savez(
        folder / ROWS_FILE,
        row=np.arange(n),
        targetid=np.arange(n, dtype=np.int64) + 39627000000000000,
        split=np.zeros(n, np.uint8),
        redshift=rng.uniform(0, 0.5, n).astype(np.float32),
        log_mstar=rng.normal(10.5, 0.5, n).astype(np.float32),
    )
    (folder / SIDECAR).write_text(
        json.dumps(
            {
                "format": FORMAT,
                "n": n,
                "dim": x.shape[1],
                "indexes": records,
                "store": "",
                "heads": "",
                "heads_sha256": "",
            }
        )
    )
    return folder


def serve(index: Path, port: int, survey: bool) -> None:
    """The child process: galclip's app under uvicorn, as 'galclip serve' runs it."""
    import uvicorn

    from galclip.index.search import open_index
    from galclip.serve.app import SearchService, create_app, load_service

    service = load_service(index) if survey else SearchService(open_index(index), galaxies=None)
    uvicorn.run(create_app(service), host=HOST, port=port, log_level="warning")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=Path("galclip-demo/index"), help="an index from 'galclip index'")
    ap.add_argument("--big", type=int, default=200_000, help="vectors in the synthetic index of part 2")
    ap.add_argument("--requests", type=int, default=400, help="requests per measurement at most")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per measurement at most")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "serve.json")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-survey", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.port, not args.no_survey)

    result: dict = {"cpus": os.cpu_count(), "k": args.k}
    rows = np.load(args.index / "rows.npz")["targetid"]
    rng = np.random.default_rng(0)
    ids = rng.choice(rows, size=min(len(rows), 300), replace=False).tolist()
    with Server(args.index) as server:
        searches = [f"/api/search?targetid={t}&query=image&target=spectrum&k={args.k}" for t in ids]
        result["demo_search"] = [load(server.port, searches, c, args.requests, args.seconds) for c in (1, 8, 64)]
        thumbs = [f"/api/image/{t}.png" for t in ids[:100]]
        result["thumbnail_cold"] = load(server.port, thumbs, 1, len(thumbs), args.seconds)  # first request of each
        result["thumbnail_warm"] = load(server.port, thumbs, 1, len(thumbs), args.seconds)
        for t in ids[:20]:  # warm the pages once
            results_page(server.port, t, args.k)
        pages = np.array([results_page(server.port, t, args.k) for t in ids[:20] for _ in range(5)]) * 1e3
        result["results_page_warm"] = {
            "pages": len(pages),
            "p50_ms": float(np.percentile(pages, 50)),
            "p99_ms": float(np.percentile(pages, 99)),
            "goal_p99_ms": 200,
        }

    with tempfile.TemporaryDirectory(prefix="galclip-bench-serve-") as tmp:
        import faiss

        big = synthetic_index(Path(tmp) / "index", args.big)
        index = faiss.read_index(str(big / "image.faiss"))
        x = np.load(big / "image.npy", mmap_mode="r")
        q_rows = rng.choice(args.big, size=200, replace=False)
        queries = np.ascontiguousarray(x[q_rows])
        targetids = (q_rows + 39627000000000000).tolist()
        count = min(args.requests, 400)

        def bare(i: int) -> None:  # FAISS alone: the same single-vector queries, k + 1 as an in-modal search asks
            index.search(queries[i % len(queries)][None], args.k + 1)

        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(bare, range(count)))
        bare_qps = count / (time.perf_counter() - t)
        with Server(big, survey=False) as server:
            paths = [f"/api/search?targetid={t}&query=image&target=image&k={args.k}" for t in targetids]
            load(server.port, paths, 8, 40, args.seconds)  # warm-up
            service = load(server.port, paths, 8, count, args.seconds)
        result["big_index"] = {
            "vectors": args.big,
            "bare_faiss_8_threads_qps": bare_qps,
            "service_8_clients": service,
            "ratio": service["requests_per_s"] / bare_qps,
            "goal_ratio": 0.5,
        }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"demo index ({len(rows)} galaxies), k = {args.k}:")
    for r in result["demo_search"]:
        print(
            f"  search, {r['clients']:2d} clients: {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  "
            f"p99 {r['p99_ms']:6.1f} ms  ({r['requests']} requests, {r['failures']} failed)"
        )
    for name in ("thumbnail_cold", "thumbnail_warm"):
        r = result[name]
        print(f"  {name:<15} p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms")
    r = result["results_page_warm"]
    print(
        f"  results page (search + {args.k + 1} thumbnails + {args.k + 1} spectra), warm: p50 {r['p50_ms']:.1f} ms, "
        f"p99 {r['p99_ms']:.1f} ms (goal p99 < 200 ms)"
    )
    b = result["big_index"]
    print(
        f"{b['vectors']:,} vectors, 8 clients: service {b['service_8_clients']['requests_per_s']:.1f} req/s vs bare FAISS "
        f"{b['bare_faiss_8_threads_qps']:.1f} q/s: {b['ratio']:.2f}x (goal >= 0.5x)"
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
