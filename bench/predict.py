"""galclip predict: throughput against the bare image-encoder forward pass, and memory against input size.

    python bench/predict.py [--galaxies 2048] [--distinct 256] [--repeats 3] [--batch-size 64]
                            [--memory-rows 10000,40000,120000] [--device auto] [--keep]

Throughput: the whole ``predict_catalogue`` on image-only survey files (read HDF5 -> preprocess ->
image encoder -> single-modality store -> heads -> k-NN -> FITS catalogue) against the same
encoder's forward passes on in-memory, already preprocessed tensors of the same batch size; the runs
alternate (bare, predict, bare, ...) and the medians are compared (these machines are noisy). Goal: ratio >= 0.9, as for extract.
The input holds ``--galaxies`` image-only rows tiled from ``--distinct`` mock galaxies under new
targetids (the mock renders ~10 galaxies/s; an encoder's cost does not depend on the pixels).

Memory: peak RSS of the k-NN and catalogue phase (a feature store as INPUT, so no encoder runs)
for stores of each size in ``--memory-rows`` (random features under the reference store's
provenance), each in a fresh interpreter; flat memory means the peaks do not grow with the size.
Prints a table and writes bench/out/predict.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from rss import measured


def bare_forward(encoders, images_rgb: torch.Tensor, batch: int) -> float:
    """Seconds for the image encoder over every row of pre-built tensors."""
    t = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(images_rgb), batch):
            encoders._image_features(images_rgb[lo : lo + batch].to(encoders.device))
    if encoders.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def synthetic_store(path: Path, reference, n: int, rows_per_shard: int = 256) -> None:
    """A complete image-only store of ``n`` random features under the reference store's provenance."""
    from galclip.store import FeatureStore

    prov = dict(reference.provenance)
    prov["encoders"] = {"image": prov["encoders"]["image"]}
    ids = 10**15 + np.arange(n, dtype=np.int64)
    meta = {
        "targetid": ids,
        "split": np.zeros(n, np.uint8),
        "redshift": np.full(n, np.nan, np.float32),
        "label_redshift": np.full(n, np.nan, np.float32),
        "label_log_mstar": np.full(n, np.nan, np.float32),
    }
    store = FeatureStore.create(path, meta, prov, rows_per_shard, {"image_features": (2048,)})
    rng = np.random.default_rng(0)
    for shard in range(store.n_shards):
        lo, hi = store.shard_rows(shard)
        store.write_shard(shard, {"image_features": np.abs(rng.standard_normal((hi - lo, 2048), np.float32))})


def tiled_survey(src: Path, dst: Path, n: int) -> None:
    """An image-only AstroCLIP-layout file of ``n`` rows: the images of ``src`` repeated, new targetids."""
    import h5py

    from galclip.data.survey import SurveyReader

    with SurveyReader(src, require=()) as reader:
        images = reader.read(0, reader.n_rows).image
    reps = -(-n // len(images))
    with h5py.File(dst, "w") as f:
        f.create_dataset("image", data=np.tile(images, (reps, 1, 1, 1))[:n], chunks=(16, 152, 152, 3))
        f.create_dataset("targetid", data=2 * 10**15 + np.arange(n, dtype=np.int64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--galaxies", type=int, default=2048)
    ap.add_argument("--distinct", type=int, default=256, help="mock galaxies rendered, then tiled to --galaxies")
    ap.add_argument("--repeats", type=int, default=3, help="predict runs, interleaved with bare forward runs")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (default: removed at the end)")
    ap.add_argument("--reference-pairs", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--memory-rows", default="10000,40000,120000", help="comma-separated store sizes for the memory runs"
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "predict.json")
    args = ap.parse_args()

    from galclip.config import ExtractConfig, HeadConfig, MockConfig
    from galclip.data.mock.survey import generate_mock
    from galclip.data.preprocess import preprocess_images
    from galclip.data.survey import SurveyReader
    from galclip.extract.encoders import Encoders
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes
    from galclip.predict.run import predict_catalogue
    from galclip.provenance import resolve_device
    from galclip.store import FeatureStore

    work = Path(tempfile.mkdtemp(prefix="galclip-bench-predict-"))
    generate_mock(MockConfig(pairs=args.reference_pairs, seed=1), work / "data")
    run_extraction(work / "data", work / "ref.zarr", ExtractConfig(batch_size=args.batch_size), progress=False)
    train_heads(work / "ref.zarr", work / "heads", HeadConfig(epochs=2), progress=False)
    build_indexes(work / "ref.zarr", work / "heads", work / "index")
    generate_mock(MockConfig(pairs=min(args.distinct, args.galaxies), seed=2, modality="image"), work / "mock_new")
    (work / "new").mkdir()
    tiled_survey(work / "mock_new", work / "new" / "survey.h5", args.galaxies)

    device = resolve_device(args.device)
    cfg = ExtractConfig(batch_size=args.batch_size, device=args.device, modalities=("image",))
    encoders = Encoders(cfg, device)
    with SurveyReader(work / "new", require=()) as reader:
        batch = reader.read(0, min(reader.n_rows, 4 * args.batch_size))
    reps = -(-args.galaxies // len(batch.targetid))
    images = preprocess_images(batch.image, cfg.crop, cfg.rgb_mapping).repeat(reps, 1, 1, 1)[: args.galaxies]
    bare_forward(encoders, images[: args.batch_size], args.batch_size)  # warm-up

    # interleaved: bare, predict, bare, predict, ..., bare; the ratio compares medians (these machines are noisy)
    t_bare, t_pipe, loop_rates = [bare_forward(encoders, images, args.batch_size)], [], []
    for _ in range(args.repeats):
        shutil.rmtree(work / "new.features.zarr", ignore_errors=True)
        t = time.perf_counter()
        result = predict_catalogue(
            work / "index",
            work / "new",
            work / "new.fits",
            batch_size=args.batch_size,
            device=args.device,
            progress=False,
            k=16,
        )
        t_pipe.append(time.perf_counter() - t)
        loop_rates.append(result["extraction"]["pairs_per_s"])
        t_bare.append(bare_forward(encoders, images, args.batch_size))
    bare, pipe = float(np.median(t_bare)), float(np.median(t_pipe))

    reference = FeatureStore.open(work / "ref.zarr")
    memory = []
    for n in (int(x) for x in args.memory_rows.split(",")):
        synthetic_store(work / f"synthetic{n}.zarr", reference, n)
        m = measured(
            "import faiss, torch, zarr\nfrom galclip.predict.run import predict_catalogue",
            "RESULT = predict_catalogue(index, store, out, progress=False)['n_predicted']",
            {
                "index": str(work / "index"),
                "store": str(work / f"synthetic{n}.zarr"),
                "out": str(work / f"synthetic{n}.fits"),
            },
        )
        memory.append(
            {
                "rows": n,
                "peak_rss_mb": m["peak_rss_mb"],
                "seconds": m["seconds"],
                "galaxies_per_s": n / m["seconds"],
                "feature_mb": n * 2048 * 4 / 2**20,
            }
        )

    out = {
        "galaxies": args.galaxies,
        "batch_size": args.batch_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "bare_forward_s": t_bare,
        "predict_s": t_pipe,
        "bare_galaxies_per_s": args.galaxies / bare,
        "predict_galaxies_per_s": args.galaxies / pipe,
        "ratio_predict_over_bare": bare / pipe,
        "ratios_per_repeat": [bare / t for t in t_pipe],
        "predict_timings_s": result["timings_s"],
        "extract_loop_galaxies_per_s": float(np.median(loop_rates)),
        "ratio_extract_loop_over_bare": float(np.median(loop_rates)) * bare / args.galaxies,
        "memory": memory,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"device {device}, {args.galaxies} image-only galaxies, batch {args.batch_size}")
    print(
        f"bare image forward {out['bare_galaxies_per_s']:8.1f} galaxies/s  (median of runs: {', '.join(f'{x:.1f} s' for x in t_bare)})"
    )
    print(
        f"galclip predict    {out['predict_galaxies_per_s']:8.1f} galaxies/s  (median of runs: {', '.join(f'{x:.1f} s' for x in t_pipe)}; "
        "last: " + ", ".join(f"{k} {v:.1f} s" for k, v in result["timings_s"].items()) + ")"
    )
    print(
        f"ratio predict/bare = {out['ratio_predict_over_bare']:.3f}  (goal >= 0.90); the extraction loop alone "
        f"{out['extract_loop_galaxies_per_s']:.1f} galaxies/s, ratio {out['ratio_extract_loop_over_bare']:.3f}"
    )
    for m in memory:
        print(
            f"k-NN + catalogue of {m['rows']:>7} stored galaxies ({m['feature_mb']:.0f} MB of features): peak RSS "
            f"{m['peak_rss_mb']:.0f} MB above imports, {m['galaxies_per_s']:.0f} galaxies/s"
        )
    print(f"-> {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
