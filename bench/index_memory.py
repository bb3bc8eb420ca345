"""Memory of the streaming index build against loading the store, one run.

    python bench/index_memory.py [--pairs 200000] [--batch 4096]

A synthetic complete store of N pairs (2048 + 256 float32 features each, as extraction writes them)
and heads trained on it for one epoch; then, each in a fresh process, peak resident memory of
(a) ``galclip index`` (features streamed ``batch`` rows at a time, embeddings memory-mapped),
(b) the naive build: ``FeatureStore.load()`` of every feature, embed all, add to IndexFlatIP;
both measured above the memory of the imports (torch, faiss, zarr). Writes bench/out/index_memory.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

CHILD = {
    "imports": "import faiss, torch, zarr, galclip.index.build, galclip.heads.checkpoint, galclip.store",
    "streaming": "from galclip.index.build import build_indexes; build_indexes(S, H, O, batch=B)",
    "load_all": (
        "import faiss, numpy as np; from galclip.store import FeatureStore; from galclip.heads.checkpoint import load_heads\n"
        "from galclip.neighbours import l2_normalise\n"
        "s = FeatureStore.open(S); h, _ = load_heads(H, s); d = s.load()\n"
        "zi, zs = h.embed(d['image_features'], d['spectrum_features'])\n"
        "for z in (zi, zs):\n    ix = faiss.IndexFlatIP(128); ix.add(l2_normalise(z))"
    ),
}


def peak_rss_mb(code: str, store: Path, heads: Path, out: Path, batch: int) -> tuple[float, float]:
    """Run ``code`` in a fresh interpreter after the imports: (peak RSS above the post-import RSS in MB, seconds)."""
    from rss import measured  # bench/rss.py

    m = measured(CHILD["imports"], code, {"S": str(store), "H": str(heads), "O": str(out), "B": batch})
    return m["peak_rss_mb"], m["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "index_memory.json")
    args = ap.parse_args()
    from heads import synthetic_store  # bench/heads.py

    from galclip.config import HeadConfig
    from galclip.heads.train import train_heads

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:  # bench/out is git-ignored
        tmp = Path(tmp)
        t = time.perf_counter()
        synthetic_store(tmp / "s.zarr", args.pairs)
        train_heads(tmp / "s.zarr", tmp / "heads", HeadConfig(epochs=1), progress=False)
        setup_s = time.perf_counter() - t
        feature_mb = args.pairs * (2048 + 256) * 4 / 2**20
        result = {"pairs": args.pairs, "batch": args.batch, "feature_mb": feature_mb, "setup_s": setup_s}
        for name, code in ((k, v) for k, v in CHILD.items() if k != "imports"):
            rss, seconds = peak_rss_mb(code, tmp / "s.zarr", tmp / "heads", tmp / f"idx_{name}", args.batch)
            result[name] = {"peak_rss_mb": rss, "seconds": seconds}
            print(f"{name:<10} peak memory above the imports {rss:8.0f} MB  {seconds:6.1f} s", flush=True)
    result["streaming_over_load_all"] = result["streaming"]["peak_rss_mb"] / result["load_all"]["peak_rss_mb"]
    print(
        f"features in the store: {feature_mb:.0f} MB; streaming build {result['streaming']['peak_rss_mb']:.0f} MB "
        f"vs loading the store {result['load_all']['peak_rss_mb']:.0f} MB ({result['streaming_over_load_all']:.2f}x)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
