"""Find more like these, with a truth: rare classes planted in a mock survey, then found again from 5 examples.

    python bench/discover.py [--pairs 20000] [--rate 0.01] [--repeats 5] [--epochs 40] [--work DIR] [--keep]
                             [--scale 1000000,4000000] [--out bench/out/discover.json]

1. ``galclip mock --plant lenses=RATE,agn=RATE``: strong-lens arcs (lenstronomy: SIE lens, Sérsic source, the
   survey's PSF, on the survey's noise) around RATE of the galaxies, and a broad-line AGN component in the spectra
   of another RATE; the truth is the mock's ``planted.csv``. Then extract (the seeded random encoders: no
   pretrained weights can be had here), heads (``--epochs``) and index, as a user would.
2. Per class and per space (embedding, image-features, spectrum-features), ``--repeats`` times from 5 random
   members of the class:
   - **rank**: the scorer of ``galclip rank`` from the 5 (positives against random unlabelled galaxies);
   - **similarity**: single-example similarity search from the first of the 5;
   - **loop**: 3 rounds in which an oracle marks the top 20 of each ranking (positive when planted, else
     negative), re-ranked after each; then the top 100;
   - **one round, all labels**: the same 60 marks given at once (the oracle marks the top 60 of the first
     ranking), re-ranked once; then the top 100;
   - and the random expectation.
   Metrics: the precision of the top 100 (and its ratio to the planted rate, the enrichment over random), the
   recall of the class in the top 100 and in the top 1% of the survey; for the two labelling schemes the recall
   of everything a person looked at (the 60 marked and the final top 100).
3. **Anomalies** (``galclip anomalies``) per space: recall of each class in the top 100 and the top 1%, against
   an isolation forest (scikit-learn, seeded) on the same vectors.
4. **Scale**: ``rank`` over synthetic embedding indexes of each ``--scale`` size (memory-mapped vectors, in a
   fresh interpreter): seconds per million and the peak anonymous memory, which should not grow with the size.

Prints the tables (Markdown) and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from rss import measured

SPACES = ("embedding", "image-features", "spectrum-features")
CLASSES = ("lenses", "agn")
TOP = 100
ROUNDS, PER_ROUND = 3, 20


def build(work: Path, pairs: int, rate: float, epochs: int, seed: int) -> dict:
    """Mock with planted classes -> store -> heads -> index in ``work``; seconds per step."""
    from galclip.config import ExtractConfig, HeadConfig, MockConfig
    from galclip.data.mock.survey import generate_mock
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes

    times = {}
    t = time.perf_counter()
    if not (work / "data" / "planted.csv").exists():
        generate_mock(MockConfig(pairs=pairs, seed=seed, plant=(("lenses", rate), ("agn", rate))), work / "data")
    times["mock"] = time.perf_counter() - t
    t = time.perf_counter()
    if not (work / "features.zarr" / "zarr.json").exists():
        run_extraction(work / "data", work / "features.zarr", ExtractConfig(seed=seed), progress=True)
    times["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    if not (work / "heads" / "heads.pt").exists():
        train_heads(work / "features.zarr", work / "heads", HeadConfig(epochs=epochs, seed=seed), progress=True)
    times["heads"] = time.perf_counter() - t
    t = time.perf_counter()
    if not (work / "index" / "index.json").exists():
        build_indexes(work / "features.zarr", work / "heads", work / "index", embedding_map=False)
    times["index"] = time.perf_counter() - t
    return times


def planted(work: Path, index) -> dict[str, np.ndarray]:
    """class -> (N,) bool over the index's rows, from the mock's planted.csv."""
    with open(work / "data" / "planted.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for c in CLASSES:
        ids = np.array([int(r["targetid"]) for r in rows if r["class"] == c], np.int64)
        out[c] = np.isin(index.rows["targetid"], ids)
    return out


def _rank(space, positives, negatives, n, seed):
    from galclip.discover.marks import Marks
    from galclip.discover.rank import rank

    tid = space.index.rows["targetid"]
    marks = Marks(tuple(int(t) for t in tid[positives]), tuple(int(t) for t in tid[negatives]))
    return rank(space, marks, n, seed).positions


def loop(space, truth: np.ndarray, start: np.ndarray, rounds: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The oracle marks the top ``rounds[i]`` of each ranking in turn; returns (every marked position after the
    start, the final top 100)."""
    pos, neg, seen = list(start), [], []
    for size in rounds:
        top = _rank(space, np.array(pos), np.array(neg, np.int64), size, seed)
        seen += list(top)
        pos += [p for p in top if truth[p]]
        neg += [p for p in top if not truth[p]]
    final = _rank(space, np.array(pos), np.array(neg, np.int64), TOP, seed)
    return np.array(seen, np.int64), final


def scores(truth: np.ndarray, start: np.ndarray, shown: np.ndarray, n_total: int) -> dict:
    """Precision and recall of ``shown`` (positions) for the class ``truth``, ``start`` not counted."""
    members = int(truth.sum()) - len(start)
    hits = int(truth[shown].sum())
    return {"precision": hits / max(len(shown), 1), "recall": hits / max(members, 1), "hits": hits}


def bare_read_seconds(space) -> float:
    """Seconds to read the space's raw vectors once, block by block, with nothing done to them: the baseline of a
    ranking's streamed pass (the index's memory-mapped embeddings, or the store's feature chunks)."""
    t = time.perf_counter()
    if space.modality is None:
        emb = space.index.embeddings
        for lo in range(0, len(space.index), 8192):
            for m in emb:
                np.array(emb[m][lo : lo + 8192])  # a copy: the pages are read
    else:
        store = space.index.open_store()
        for lo in range(0, store.n, 8192):
            store.read(f"{space.modality}_features", lo, min(lo + 8192, store.n))
    return time.perf_counter() - t


def run_space(index, space_name: str, truth: np.ndarray, repeats: int, seed: int) -> dict:
    space = index.space(space_name, seed)
    inside = space.holds(np.arange(len(index)))
    truth = truth & inside
    n, rate = int(inside.sum()), float(truth.sum() / inside.sum())
    top1pc = max(1, n // 100)
    rows = {k: [] for k in ("rank", "rank_top1pc", "similarity", "loop", "one_round", "loop_top100", "one_top100")}
    seconds = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r, 101])
        start = rng.choice(np.flatnonzero(truth), 5, replace=False)
        t = time.perf_counter()
        ranked = _rank(space, start, np.zeros(0, np.int64), max(TOP, top1pc), seed + r)
        seconds.append(time.perf_counter() - t)
        rows["rank"].append(scores(truth, start, ranked[:TOP], n))
        rows["rank_top1pc"].append(scores(truth, start, ranked[:top1pc], n))
        rows["similarity"].append(scores(truth, start, _rank(space, start[:1], np.zeros(0, np.int64), TOP, seed), n))
        seen, final = loop(space, truth, start, [PER_ROUND] * ROUNDS, seed + r)
        rows["loop"].append(scores(truth, start, np.union1d(seen, final), n))
        rows["loop_top100"].append(scores(truth, start, final, n))
        seen1, final1 = loop(space, truth, start, [PER_ROUND * ROUNDS], seed + r)
        rows["one_round"].append(scores(truth, start, np.union1d(seen1, final1), n))
        rows["one_top100"].append(scores(truth, start, final1, n))
    bare = float(np.median([bare_read_seconds(space) for _ in range(3)]))
    mean = {
        k: {
            **{m: float(np.mean([v[m] for v in vs])) for m in ("precision", "recall")},
            **{f"{m}_stderr": float(np.std([v[m] for v in vs]) / np.sqrt(len(vs))) for m in ("precision", "recall")},
        }
        for k, vs in rows.items()
    }
    members = int(truth.sum()) - 5
    return {
        "galaxies": n,
        "planted": int(truth.sum()),
        "rate": rate,
        "random_precision": rate,
        "random_recall_top100": TOP / (n - 5),
        "random_recall_top1pc": top1pc / (n - 5),
        "random_recall_looked_at": (TOP + ROUNDS * PER_ROUND) / (n - 5),
        "members_to_find": members,
        **mean,
        "enrichment_top100": mean["rank"]["precision"] / rate,
        "enrichment_similarity": mean["similarity"]["precision"] / rate,
        "rank_seconds": float(np.median(seconds)),
        "rank_seconds_per_million": float(np.median(seconds)) / n * 1e6,
        "bare_read_seconds": bare,
        "rank_ratio_to_bare_read": float(np.median(seconds)) / bare,
        "repeats": repeats,
    }


def run_anomalies(index, truths: dict, seed: int) -> dict:
    from sklearn.ensemble import IsolationForest

    from galclip.discover.rank import anomalies

    out = {}
    for name in SPACES:
        space = index.space(name, seed)
        n = len(space)
        top1pc = max(1, n // 100)
        t = time.perf_counter()
        knn = anomalies(space, max(TOP, top1pc), seed=seed).positions
        knn_s = time.perf_counter() - t
        everyone = space.at(np.arange(n))
        x = space.vectors(everyone)
        t = time.perf_counter()
        forest = IsolationForest(n_estimators=200, random_state=seed).fit(x)
        odd = everyone[np.argsort(forest.score_samples(x))[: max(TOP, top1pc)]]  # lower: more anomalous
        forest_s = time.perf_counter() - t
        rec = {"galaxies": n, "knn_seconds": knn_s, "forest_seconds": forest_s}
        for c, truth in truths.items():
            t = truth & space.holds(np.arange(len(index)))
            members = max(int(t.sum()), 1)
            for method, ranked in (("knn", knn), ("forest", odd)):
                rec[f"{c}_{method}_recall_top100"] = int(t[ranked[:TOP]].sum()) / members
                rec[f"{c}_{method}_recall_top1pc"] = int(t[ranked[:top1pc]].sum()) / members
            rec[f"{c}_random_recall_top100"] = TOP / n
        out[name] = rec
    return out


SCALE_IMPORTS = """
import threading
from pathlib import Path
import numpy as np
import sklearn.linear_model
from galclip.discover.marks import Marks
from galclip.discover.rank import rank
from galclip.discover.spaces import open_space
from galclip.index.search import Index
"""
SCALE_CODE = """
def anon_kb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('RssAnon')).split()[1])

done = False
def watch():
    while not done:
        peak[0] = max(peak[0], anon_kb())
        time.sleep(0.005)
watcher = threading.Thread(target=watch, daemon=True)
emb = {m: np.load(f"{folder}/{m}.npy", mmap_mode="r") for m in ("image", "spectrum")}
rows = {"targetid": np.arange(n, dtype=np.int64) + 10**15}
index = Index(Path(folder), {"n": n, "dim": 128, "stores": [{"modalities": ["image", "spectrum"]}]}, {}, rows, emb)
space = open_space(index, "embedding")
peak = [anon_kb()]  # after the index's own arrays (its targetids, 8 bytes a galaxy): what ranking adds
before = peak[0]
watcher.start()
t0 = time.perf_counter()
ranked = rank(space, Marks(positive=tuple(int(t) for t in rows["targetid"][:5])), 100)
seconds = time.perf_counter() - t0
done = True
watcher.join()
# the baseline in the same process: one bare pass over the same vectors (read, sum, normalise, one dot product)
w = np.random.default_rng(0).standard_normal(128).astype(np.float32)
t0 = time.perf_counter()
for lo in range(0, n, 8192):
    v = emb["image"][lo : lo + 8192] + emb["spectrum"][lo : lo + 8192]
    (v / np.linalg.norm(v, axis=1, keepdims=True)) @ w
bare = time.perf_counter() - t0
RESULT = {"seconds": seconds, "bare_pass_seconds": bare, "peak_anon_mb_above_start": (peak[0] - before) / 1024}
"""


def scale(sizes: list[int], scratch: Path) -> list[dict]:
    out = []
    for n in sizes:
        folder = scratch / f"emb{n}"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(n)
        for m in ("image", "spectrum"):
            arr = np.lib.format.open_memmap(folder / f"{m}.npy", "w+", np.float32, (n, 128))
            for lo in range(0, n, 1 << 20):
                block = rng.standard_normal((min(1 << 20, n - lo), 128), dtype=np.float32)
                arr[lo : lo + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
            arr.flush()
            del arr
        got = measured(SCALE_IMPORTS, SCALE_CODE, {"folder": str(folder), "n": n})
        rec = {"galaxies": n, **got["result"], "peak_rss_mb": got["peak_rss_mb"]}
        rec["seconds_per_million"] = rec["seconds"] / n * 1e6
        rec["ratio_to_bare_pass"] = rec["seconds"] / rec["bare_pass_seconds"]
        out.append(rec)
        shutil.rmtree(folder)
        print(
            f"scale {n:,}: {rec['seconds']:.1f} s ({rec['seconds_per_million']:.2f} s per million; "
            f"{rec['ratio_to_bare_pass']:.2f}x a bare pass), "
            f"peak anonymous memory +{rec['peak_anon_mb_above_start']:.0f} MB",
            flush=True,
        )
    return out


def table(results: dict) -> str:
    lines = [
        "| class | space | top-100 precision (5 positives) | × random | similarity (1 positive) × random | "
        "recall top 100 | recall top 1% | loop 3×20: recall of all looked at | one round of 60 | random |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, per_space in results["classes"].items():
        for s, r in per_space.items():
            lines.append(
                f"| {c} | {s} | {r['rank']['precision']:.2f} | {r['enrichment_top100']:.1f}× | "
                f"{r['enrichment_similarity']:.1f}× | {r['rank']['recall']:.3f} (random {r['random_recall_top100']:.3f}) | "
                f"{r['rank_top1pc']['recall']:.3f} (random {r['random_recall_top1pc']:.3f}) | "
                f"{r['loop']['recall']:.3f} | {r['one_round']['recall']:.3f} | {r['random_recall_looked_at']:.3f} |"
            )
    lines += [
        "",
        "| space | class | kNN anomaly recall top 100 / top 1% | isolation forest top 100 / top 1% | random top 100 |",
        "|---|---|---|---|---|",
    ]
    for s, r in results["anomalies"].items():
        for c in CLASSES:
            lines.append(
                f"| {s} | {c} | {r[f'{c}_knn_recall_top100']:.3f} / {r[f'{c}_knn_recall_top1pc']:.3f} | "
                f"{r[f'{c}_forest_recall_top100']:.3f} / {r[f'{c}_forest_recall_top1pc']:.3f} | "
                f"{r[f'{c}_random_recall_top100']:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep the mock, store, heads and index here")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--scale", default="1000000,4000000", help="synthetic index sizes for the timing; '' skips")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "discover.json")
    parser.add_argument("--only-scale", action="store_true", help="only the scale timing (writes --out)")
    parser.add_argument("--classes", default=",".join(CLASSES), help="planted classes to measure")
    parser.add_argument("--spaces", default=",".join(SPACES), help="spaces to measure")
    parser.add_argument("--no-anomalies", action="store_true")
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from galclip.discover import open_index

    work = args.work or Path(tempfile.mkdtemp(prefix="galclip-discover-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.only_scale:
        sizes = [int(s) for s in args.scale.split(",") if s]
        args.out.write_text(json.dumps({"scale": scale(sizes, work / "scale")}, indent=2) + "\n")
        return
    try:
        times = build(work, args.pairs, args.rate, args.epochs, args.seed)
        index = open_index(work / "index")
        truths = planted(work, index)
        results = {"pairs": args.pairs, "rate": args.rate, "build_seconds": times, "classes": {}}
        for c in args.classes.split(","):
            results["classes"][c] = {}
            for s in args.spaces.split(","):
                results["classes"][c][s] = r = run_space(index, s, truths[c], args.repeats, args.seed)
                print(
                    f"{c} in {s}: top-100 precision {r['rank']['precision']:.3f} ({r['enrichment_top100']:.1f}x "
                    f"random), loop {r['loop']['recall']:.3f} vs one round {r['one_round']['recall']:.3f}",
                    flush=True,
                )
        results["anomalies"] = {} if args.no_anomalies else run_anomalies(index, truths, args.seed)
        sizes = [int(s) for s in args.scale.split(",") if s]
        results["scale"] = scale(sizes, work / "scale") if sizes else []
        print(table(results))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"-> {args.out}")
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
