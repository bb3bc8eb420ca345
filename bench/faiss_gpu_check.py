"""faiss-gpu check (run by bench/gpu.sh on a GPU machine): galclip's index path moves the index to the
GPU, and its neighbours equal the CPU index's.

    python bench/faiss_gpu_check.py [--n 200000] [--queries 2000]

Prints the index types, the share of identical top-10 ids and queries/s on GPU vs CPU; writes
bench/out/faiss_gpu.json. Exits 1 when no GPU index was made or the results disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from search import clustered  # noqa: E402  (bench/search.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "faiss_gpu.json")
    args = ap.parse_args()
    import faiss

    from galclip.evaluate.index import choose_spec, new_index, on_gpu_if_available

    x = clustered(args.n)
    q = x[np.random.default_rng(1).choice(args.n, args.queries, replace=False)]
    cpu = new_index(choose_spec(args.n, 250_000), 128)
    cpu.add(x)
    gpu = on_gpu_if_available(new_index(choose_spec(args.n, 250_000), 128))
    gpu.add(x)
    rates = {}
    ids = {}
    for name, index in (("cpu", cpu), ("gpu", gpu)):
        index.search(q[:10], 10)  # warm-up
        t = time.perf_counter()
        _, ids[name] = index.search(q, 10)
        rates[name] = args.queries / (time.perf_counter() - t)
    same = float(np.mean(ids["cpu"] == ids["gpu"]))
    result = {"faiss": faiss.__version__, "gpus": faiss.get_num_gpus(), "gpu_index": type(gpu).__name__,
              "same_top10": same, "qps_cpu": rates["cpu"], "qps_gpu": rates["gpu"], "n": args.n}
    print(json.dumps(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if "Gpu" not in result["gpu_index"] or same < 0.99:
        sys.exit(1)


if __name__ == "__main__":
    main()
