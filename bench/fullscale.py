"""galclip at the survey's full size on this machine: time and peak memory of every stage after extraction.

    python bench/fullscale.py [--pairs 198000] [--variants 4] [--template galclip-demo/features.zarr]
                              [--stages store,heads,sweep,evaluate,index,search,serve,extract] --out FILE.json

1. **The store.** N pairs written through the store writer ``galclip extract`` uses (``FeatureStore.create``
   and ``write_shard``, shard by shard). Each new pair copies a random row of the template store (the
   demo's features: their statistics, their dead ReLU channels and their image-spectrum alignment) and
   adds a shared 32-d latent mapped through two fixed random linear maps into both modalities, so every
   pair stays aligned with its partner and unlike every other; each augmented image view adds its own
   noise. Labels come from the template row.
2. **The stages**, each in its own fresh process, with wall time and peak RSS above the imports against
   the bytes of the arrays that stage uses: heads (a few epochs, projected to 80), a sweep of 16
   configurations (1 epoch), evaluate (UMAP on its subsample), index (exact, and IVF with measured
   recall, with the UMAP map), search latency through ``Index.search``, and the search service under
   load (bench/serve.py's load generator, 8 clients).
3. **Extraction** of 1k and 4k mock pairs with the real encoder architectures: peak RSS flat in N.

Goals: heads and sweep peak RSS <= 1.5x the fp16 bytes of the arrays they train on; evaluate and index
<= 1.0x the store's feature bytes; extraction's peak RSS at 4k <= 1.1x that at 1k.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from rss import measured

IMPORTS = (
    "import faiss, numpy as np, torch, zarr, galclip.heads.train, galclip.heads.sweep, galclip.index.build, "
    "galclip.evaluate.pipeline, galclip.store"
)


def write_store(path: Path, template: Path, n: int, variants: int, rows_per_shard: int = 256, seed: int = 0) -> dict:
    """A complete store of ``n`` pairs shaped like ``template``'s features (see the module docstring)."""
    from galclip.progress import progress
    from galclip.split import assign_split
    from galclip.store import FeatureStore

    t0 = time.perf_counter()
    src = FeatureStore.open(template)
    base = src.load()
    t_img, t_spec = base["image_features"], base["spectrum_features"]
    s_img, s_spec = t_img.std(0) + 1e-3, t_spec.std(0) + 1e-3
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(32, t_img.shape[1])).astype(np.float32) / math.sqrt(32)
    b = rng.normal(size=(32, t_spec.shape[1])).astype(np.float32) / math.sqrt(32)
    pick = rng.integers(0, len(t_img), n)
    ids = np.arange(n, dtype=np.int64) + 39_627_000_000_000_000
    meta = {
        "targetid": ids,
        "split": assign_split(ids),
        "redshift": base["redshift"][pick],
        "label_redshift": base["label_redshift"][pick],
        "label_log_mstar": base["label_log_mstar"][pick],
    }
    arrays = {"image_features": (t_img.shape[1],), "spectrum_features": (t_spec.shape[1],)}
    if variants:
        arrays["image_features_aug"] = (variants, t_img.shape[1])
    provenance = {
        "encoders": {
            kind: {"weights": {"source": f"synthetic: rows of {template} plus an aligned latent"}}
            for kind in ("image", "spectrum")
        },
        "preprocessing": {},
        "data": {"pairs": n, "variants": variants, "seed": seed},
        "rows_per_shard": rows_per_shard,
    }
    store = FeatureStore.create(path, meta, provenance, rows_per_shard, arrays)
    with progress(store.n_shards, "store", "shard") as bar:
        for shard in range(store.n_shards):
            lo, hi = store.shard_rows(shard)
            z = rng.normal(size=(hi - lo, 32)).astype(np.float32)
            img = np.maximum(t_img[pick[lo:hi]] + 0.5 * (z @ a) * s_img, 0)  # pooled ReLU features stay >= 0
            feats = {"image_features": img, "spectrum_features": t_spec[pick[lo:hi]] + 0.5 * (z @ b) * s_spec}
            if variants:
                noise = rng.normal(size=(hi - lo, variants, img.shape[1])).astype(np.float32)
                feats["image_features_aug"] = np.maximum(img[:, None] + 0.3 * noise * s_img, 0)
            store.write_shard(shard, feats)
            bar.update(1)
    feature_bytes = n * sum(int(np.prod(t)) for t in arrays.values()) * 4
    return {"pairs": n, "variants": variants, "feature_bytes": feature_bytes, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=198_000)
    ap.add_argument("--variants", type=int, default=4)
    ap.add_argument(
        "--template",
        type=Path,
        default=Path("galclip-demo/features.zarr"),
        help="a store whose features the synthetic rows copy (make demo writes one)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=Path(__file__).parent / "out" / "fullscale",
        help="where the store and the stages' outputs go (bench/out is git-ignored)",
    )
    ap.add_argument("--stages", default="store,heads,sweep,evaluate,index,search,serve,extract")
    ap.add_argument("--heads-epochs", type=int, default=2)
    ap.add_argument("--sweep-configs", type=int, default=16)
    ap.add_argument("--extract-pairs", default="1000,4000")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "fullscale.json")
    args = ap.parse_args()
    stages = args.stages.split(",")
    if "store" in stages and not (args.template / "zarr.json").exists():
        ap.error(
            f"--template {args.template}: no feature store there; the synthetic store copies a real store's "
            "feature rows. Run 'make demo' first (it writes galclip-demo/features.zarr), or pass "
            "--template STORE"
        )
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    store = work / "features.zarr"
    result: dict = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.update({"pairs": args.pairs, "variants": args.variants})

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=float))

    if "store" in stages:
        if store.exists():
            shutil.rmtree(store)
        result["store"] = write_store(store, args.template, args.pairs, args.variants)
        print(
            f"store: {args.pairs} pairs x {args.variants} views, {result['store']['feature_bytes'] / 2**30:.2f} GiB "
            f"of features in {result['store']['seconds']:.0f} s",
            flush=True,
        )
        save()
    n = args.pairs
    fp16_train_bytes = n * (2048 * (1 + args.variants) + 256) * 2
    feature_bytes = result["store"]["feature_bytes"]
    values = {"S": str(store), "W": str(work)}

    def stage(name: str, code: str, goal_bytes: float, goal: float) -> None:
        m = measured(IMPORTS, code, values)
        m["array_bytes"], m["goal"] = goal_bytes, goal
        m["ratio"] = m["peak_rss_mb"] * 2**20 / goal_bytes
        result[name] = m
        print(
            f"{name:<9} {m['seconds']:8.1f} s  peak RSS {m['peak_rss_mb']:8.0f} MB = {m['ratio']:.2f}x of "
            f"{goal_bytes / 2**20:.0f} MB (goal <= {goal}x)  {json.dumps(m['result'], default=float)[:200]}",
            flush=True,
        )
        save()

    if "heads" in stages:
        stage(
            "heads",
            f"""
from galclip.config import HeadConfig
s = galclip.heads.train.train_heads(S, W + '/heads', HeadConfig(epochs={args.heads_epochs}, early_stopping=None), progress=False)
RESULT = {{'epochs': s['epochs_run'], 'seconds_per_epoch': s['seconds_per_epoch'], 'projected_80_epochs_s': 80 * s['seconds_per_epoch'],
          'best_val_loss': s['best_val_loss'], 'ln_batch': float(np.log(512)), 'n_train': s['n_train']}}""",
            fp16_train_bytes,
            1.5,
        )
    if "sweep" in stages:
        lrs = ",".join(f"{x:.3g}" for x in np.geomspace(3e-5, 1e-3, max(1, args.sweep_configs // 2)))
        stage(
            "sweep",
            f"""
from galclip.config import HeadConfig
from galclip.heads.sweep import parse_grid, run_sweep
rows = run_sweep(S, W + '/sweep', HeadConfig(epochs=1, early_stopping=None), parse_grid(['lr={lrs}', 'tau=0.07,0.1']), progress=False)
RESULT = {{'configs': len(rows), 'best_val_loss': min(r['best_val_loss'] for r in rows)}}""",
            fp16_train_bytes,
            1.5,
        )
    if "evaluate" in stages:
        stage(
            "evaluate",
            """
from galclip.config import EvalConfig
m = galclip.evaluate.pipeline.evaluate_store(S, W + '/heads', W + '/report', EvalConfig())
RESULT = {'n_eval': m['n_eval'], 'cross_r2': m['zero_shot_r2']['cross'], 'im2sp_recall@10': m['retrieval']['im2sp']['recall@10']}""",
            feature_bytes,
            1.0,
        )
    if "index" in stages:
        stage(
            "index",
            """
side = galclip.index.build.build_indexes(S, W + '/heads', W + '/index', embedding_map=True)
RESULT = {m: {k: r[k] for k in ('kind', 'recall@10', 'ntotal')} for m, r in side['indexes'].items()} | {'map_s': side['map']['seconds']}""",
            feature_bytes,
            1.0,
        )
        stage(
            "index_ivf",
            """
side = galclip.index.build.build_indexes(S, W + '/heads', W + '/index_ivf', exact_max=100_000)
RESULT = {m: {k: r[k] for k in ('kind', 'nlist', 'nprobe', 'recall@10', 'ntotal')} for m, r in side['indexes'].items()}""",
            feature_bytes,
            1.0,
        )
    if "search" in stages:
        stage(
            "search",
            """
from galclip.index.search import open_index
idx = open_index(W + '/index')
ids = idx.rows['targetid'][np.random.default_rng(0).choice(len(idx), 500, replace=False)]
lat = []
for i, tid in enumerate(ids):
    t0 = time.perf_counter(); idx.search(int(tid), query='image' if i % 2 else 'spectrum', target='spectrum', k=16); lat.append(time.perf_counter() - t0)
lat = np.array(lat) * 1e3
RESULT = {'queries': len(lat), 'p50_ms': float(np.percentile(lat, 50)), 'p99_ms': float(np.percentile(lat, 99))}""",
            feature_bytes,
            1.0,
        )
    if "serve" in stages:
        from serve import Server, load  # bench/serve.py

        rows = np.load(work / "index" / "rows.npz")["targetid"]
        ids = np.random.default_rng(1).choice(rows, 300, replace=False)
        with Server(work / "index", survey=False) as server:
            paths = [f"/api/search?targetid={t}&query=image&target=spectrum&k=16" for t in ids]
            load(server.port, paths, 8, 40, 20)  # warm-up
            result["serve"] = {c: load(server.port, paths, c, 400, 30) for c in (1, 8)}
        for c, r in result["serve"].items():
            print(
                f"serve     {c} clients: {r['requests_per_s']:.1f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms",
                flush=True,
            )
        save()
    if "extract" in stages:
        result["extract"] = {}
        for pairs in (int(p) for p in args.extract_pairs.split(",")):
            mock = work / f"mock{pairs}"
            if not (mock / "survey.h5").exists():
                measured(
                    "from galclip.data.mock.survey import generate_mock\nfrom galclip.config import MockConfig",
                    f"generate_mock(MockConfig(pairs={pairs}, seed=0), {str(mock)!r})",
                    {},
                )
            shutil.rmtree(work / f"extract{pairs}.zarr", ignore_errors=True)
            m = measured(
                "import torch, zarr, galclip.extract.run\nfrom galclip.config import ExtractConfig",
                f"s = galclip.extract.run.run_extraction({str(mock)!r}, {str(work / f'extract{pairs}.zarr')!r}, "
                "ExtractConfig(), progress=False)\nRESULT = {'pairs_per_s': s['pairs_per_s']}",
                {},
            )
            result["extract"][str(pairs)] = m
            print(
                f"extract   {pairs} mock pairs: peak RSS {m['peak_rss_mb']:.0f} MB, {m['result']['pairs_per_s']:.1f} pairs/s",
                flush=True,
            )
            save()
        sizes = sorted(result["extract"], key=int)
        result["extract"]["ratio"] = (
            result["extract"][sizes[-1]]["peak_rss_mb"] / result["extract"][sizes[0]]["peak_rss_mb"]
        )
        print(
            f"extract   peak RSS at {sizes[-1]} / at {sizes[0]} pairs: {result['extract']['ratio']:.2f}x (goal <= 1.1x)"
        )
    save()
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
