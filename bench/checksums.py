"""What the per-chunk CRC-32C costs: store writes (extraction's side) and the heads' reads, with and without it.

    python bench/checksums.py [--pairs 8192] [--variants 2] [--repeats 5]

Two stores of the same random features (2048 + 256 per pair and ``--variants`` augmented image views,
256-row shards, fsync'ed as extraction does) are written and read back by ``load_training_data``
(the heads' reader: two passes, standardised, fp16): one with galclip's codecs (Zstd level 0 +
CRC-32C), one with Zstd alone (galclip 0.2). Runs alternate and medians are compared (these
machines are noisy). Writes are also put against a whole extraction at the CPU rate
``bench/extract.py`` measures (``--extract-pairs-per-s``), and reads against one whole ``galclip heads``
run (default settings, early stopping) on the checksummed store, timed here. Prints a table; writes
bench/out/checksums.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def write_store(path: Path, n: int, variants: int, with_crc: bool) -> float:
    """Seconds to create and fill a store of ``n`` random pairs, shard by shard."""
    from zarr.codecs import ZstdCodec

    import galclip.store.feature_store as fs
    from galclip.split import assign_split

    original = fs._codecs
    if not with_crc:
        fs._codecs = lambda: [ZstdCodec(level=0)]
    try:
        ids = 10**15 + np.arange(n, dtype=np.int64)
        meta = {
            "targetid": ids,
            "split": assign_split(ids),
            "redshift": np.zeros(n, np.float32),
            "label_redshift": np.zeros(n, np.float32),
            "label_log_mstar": np.zeros(n, np.float32),
        }
        arrays = {"image_features": (2048,), "spectrum_features": (256,)}
        if variants:
            arrays["image_features_aug"] = (variants, 2048)
        rng = np.random.default_rng(0)
        blocks = {name: np.abs(rng.standard_normal((256, *tail), np.float32)) for name, tail in arrays.items()}
        t = time.perf_counter()
        store = fs.FeatureStore.create(
            path, meta, {"encoders": {}, "preprocessing": {}, "data": {}, "rows_per_shard": 256}, 256, arrays
        )
        for shard in range(store.n_shards):
            lo, hi = store.shard_rows(shard)
            store.write_shard(
                shard, {name: b[: hi - lo] for name, b in blocks.items()}, quarantine=np.zeros(hi - lo, np.uint8)
            )
        return time.perf_counter() - t
    finally:
        fs._codecs = original


def read_store(path: Path) -> float:
    """Seconds for the heads' reader over the whole store."""
    from galclip.heads.data import load_training_data
    from galclip.store import FeatureStore

    t = time.perf_counter()
    load_training_data(FeatureStore.open(path))
    return time.perf_counter() - t


def heads_run(path: Path, out: Path) -> float:
    """Seconds for one whole heads training (default settings) on the store at ``path``."""
    from galclip.config import HeadConfig
    from galclip.heads.train import train_heads

    t = time.perf_counter()
    train_heads(path, out, HeadConfig(), progress=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=8192)
    ap.add_argument("--variants", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--extract-pairs-per-s",
        type=float,
        default=19.7,
        help="a whole extraction's rate on this machine (bench/extract.py), to put the writes against",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "checksums.json")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="galclip-bench-crc-"))
    times = {"write_crc": [], "write_plain": [], "read_crc": [], "read_plain": []}
    try:
        for rep in range(args.repeats):
            for kind in ("crc", "plain") if rep % 2 == 0 else ("plain", "crc"):
                path = work / f"{kind}.zarr"
                shutil.rmtree(path, ignore_errors=True)
                times[f"write_{kind}"].append(write_store(path, args.pairs, args.variants, kind == "crc"))
                times[f"read_{kind}"].append(read_store(path))
        heads_s = heads_run(work / "crc.zarr", work / "heads")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: float(np.median(v)) for k, v in times.items()}
    write_over = med["write_crc"] / med["write_plain"] - 1
    read_over = med["read_crc"] / med["read_plain"] - 1
    extraction_s = args.pairs / args.extract_pairs_per_s
    out = {
        "pairs": args.pairs,
        "variants": args.variants,
        "repeats": args.repeats,
        "seconds": times,
        "medians": med,
        "write_overhead": write_over,
        "read_overhead": read_over,
        "extraction_overhead": (med["write_crc"] - med["write_plain"]) / extraction_s,
        "extract_pairs_per_s": args.extract_pairs_per_s,
        "heads_run_s": heads_s,
        "heads_overhead": (med["read_crc"] - med["read_plain"]) / heads_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(
        f"{args.pairs} pairs, {args.variants} augmented views, 256-row shards, medians of {args.repeats} alternating runs"
    )
    print(
        f"store writes   {med['write_plain']:.2f} s plain -> {med['write_crc']:.2f} s with CRC-32C: {100 * write_over:+.1f}%"
    )
    print(
        f"heads' reads   {med['read_plain']:.2f} s plain -> {med['read_crc']:.2f} s with CRC-32C: {100 * read_over:+.1f}%"
    )
    print(
        f"against a whole extraction at {args.extract_pairs_per_s} pairs/s ({extraction_s:.0f} s): "
        f"{100 * out['extraction_overhead']:+.2f}%  (goal < 2%)"
    )
    print(
        f"against a whole heads run ({heads_s:.1f} s, default settings):  "
        f"{100 * out['heads_overhead']:+.2f}%  (goal < 2%)"
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
