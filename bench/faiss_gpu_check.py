"""faiss-gpu check (run by bench/gpu.sh on a GPU machine): the calls ``galclip index`` makes —
``new_index`` -> ``on_gpu_if_available`` -> train/add -> ``to_cpu`` -> ``tune_nprobe`` — on the GPU.

    python bench/faiss_gpu_check.py [--n 400000] [--queries 1000]

Exact index: filled on the GPU and brought back, its neighbours must equal a CPU-built index's.
IVF index (N above --exact-max): trained and filled on the GPU, tuned on the CPU, its recall@10
must reach 0.95; build seconds GPU vs CPU. Writes bench/out/faiss_gpu.json; exits 1 when no GPU
index was made or a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from search import clustered


def build(spec, x: np.ndarray, gpu: bool, rng) -> tuple[object, float, str]:
    """(CPU index, build seconds, type name while building)."""
    from galclip.index.build import on_gpu_if_available, to_cpu
    from galclip.index.vectors import new_index

    t = time.perf_counter()
    index = new_index(spec, x.shape[1])
    index = on_gpu_if_available(index) if gpu else index
    kind = type(index).__name__
    if spec.kind == "ivf":
        index.train(x[np.sort(rng.choice(len(x), min(len(x), 40 * spec.nlist), replace=False))])
    index.add(x)
    return to_cpu(index), time.perf_counter() - t, kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--exact-max", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "faiss_gpu.json")
    args = ap.parse_args()
    import faiss

    from galclip.index.build import exact_neighbours, tune_nprobe
    from galclip.index.vectors import IndexSpec, choose_spec

    x = clustered(args.n)
    rows = np.random.default_rng(1).choice(args.n, args.queries, replace=False)
    q = x[rows]
    result: dict = {"faiss": faiss.__version__, "gpus": faiss.get_num_gpus(), "n": args.n}
    flat_cpu, result["flat_cpu_s"], _ = build(IndexSpec("flat"), x, False, np.random.default_rng(0))
    flat_gpu, result["flat_gpu_s"], result["flat_type_on_gpu"] = build(
        IndexSpec("flat"), x, True, np.random.default_rng(0)
    )
    result["flat_same_top10"] = float(np.mean(flat_cpu.search(q, 10)[1] == flat_gpu.search(q, 10)[1]))
    spec = choose_spec(args.n, args.exact_max)
    truth = exact_neighbours(x, q, 11)
    for where in ("cpu", "gpu"):
        index, seconds, kind = build(spec, x, where == "gpu", np.random.default_rng(0))
        nprobe, recall = tune_nprobe(index, truth, q, 0.95, self_ids=rows)
        result[f"ivf_{where}"] = {
            "type_while_building": kind,
            "nlist": spec.nlist,
            "build_s": seconds,
            "nprobe": nprobe,
            "recall@10": recall,
        }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    ok = (
        "Gpu" in result["flat_type_on_gpu"]
        and "Gpu" in result["ivf_gpu"]["type_while_building"]
        and result["flat_same_top10"] >= 0.99
        and result["ivf_gpu"]["recall@10"] >= 0.95
    )
    print("faiss-gpu check:", "OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
