"""Re-rank row reads beyond the page cache: one thread against galclip's parallel reads, in the same run.

Writes an (n, 128) float32 .npy (default 16M rows, 8 GiB) block by block, then times reading 1,024 random rows
(the shortlist of a 42M-vector IVF-PQ search) through ``VectorFile`` with 1 thread and with ``READ_THREADS``,
the page cache dropped before each (root only; otherwise the reads are warm and the note says so).

    python bench/rows.py [--rows 16000000] [--out bench/out/rows.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

import galclip.index.vectors as vectors


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=16_000_000)
    ap.add_argument("--reads", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--path", type=Path, default=Path(__file__).parent / "out" / "rows.npy")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "rows.json")
    args = ap.parse_args()
    args.path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(args.path, mode="w+", dtype=np.float32, shape=(args.rows, 128))
    for lo in range(0, args.rows, 1_000_000):
        out[lo : lo + 1_000_000] = rng.random((min(1_000_000, args.rows - lo), 128), dtype=np.float32)
    out.flush()
    del out
    result = {"rows": args.rows, "file_bytes": args.path.stat().st_size, "reads": args.reads}
    try:
        for name, threads in (("one_thread", 1), ("parallel", vectors.READ_THREADS)):
            vectors.READ_THREADS = threads
            rows = vectors.VectorFile(args.path)
            result["cold"] = drop_caches()
            times = []
            for _ in range(args.repeats):
                ids = rng.choice(args.rows, args.reads, replace=False)
                t = time.perf_counter()
                rows[ids]
                times.append((time.perf_counter() - t) * 1e3)
            rows.close()
            result[name] = {"threads": threads, "p50_ms": float(np.median(times)), "max_ms": float(max(times))}
            print(f"{name:10s} ({threads:2d} threads): p50 {np.median(times):6.1f} ms, max {max(times):6.1f} ms")
    finally:
        args.path.unlink()
    result["speedup_p50"] = result["one_thread"]["p50_ms"] / result["parallel"]["p50_ms"]
    print(f"parallel reads: {result['speedup_p50']:.1f}x faster at p50 (cold page cache: {result['cold']})")
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
