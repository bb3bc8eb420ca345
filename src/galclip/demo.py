"""The demo pipeline: mock survey -> extract -> heads -> evaluate -> index -> predict, timing each stage."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from galclip.config import EvalConfig, ExtractConfig, HeadConfig, MockConfig

logger = logging.getLogger(__name__)


def run_demo(pairs: int, out: str | Path, epochs: int = 80, umap: bool = True, seed: int = 0, progress: bool = True) -> dict:
    """Run every stage into ``out`` (data/, features.zarr, heads/, report/, index/, then heldout/ and predict/: a
    zero-shot catalogue of image-only galaxies scored against their truth); returns the metrics, with the
    catalogue's under "predict"."""
    from galclip.data.mock.survey import generate_mock
    from galclip.evaluate.pipeline import evaluate_store
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes
    from galclip.predict.run import predict_catalogue

    out = Path(out)
    data, store, heads, report, index = (out / "data", out / "features.zarr", out / "heads", out / "report",
                                         out / "index")
    heldout, predicted = out / "heldout", out / "predict"
    timings: dict[str, float] = {}
    for path in (data, store, heads, report, index, heldout, predicted):  # a demo always starts from scratch
        if path.exists():
            shutil.rmtree(path)

    t = time.perf_counter()
    generate_mock(MockConfig(pairs=pairs, seed=seed), data)
    timings["mock"] = time.perf_counter() - t

    t = time.perf_counter()
    run_extraction(data, store, ExtractConfig(seed=seed), progress=progress)
    timings["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    train_heads(store, heads, HeadConfig(epochs=epochs, seed=seed), progress=progress)
    timings["heads"] = time.perf_counter() - t

    metrics = evaluate_store(store, heads, report, EvalConfig(umap=umap, seed=seed), extra_metrics={"timings_s": timings})

    t = time.perf_counter()  # for 'galclip serve' and galclip.open_index; after evaluate, so metrics.json is as before
    build_indexes(store, heads, index, seed=seed, progress=progress, embedding_map=umap)
    metrics["timings_s"]["index"] = time.perf_counter() - t

    # the use AstroCLIP is for: galaxies with only an image, catalogued from their labelled neighbours
    t = time.perf_counter()
    generate_mock(MockConfig(pairs=max(64, pairs // 10), seed=seed + 1000, modality="image"), heldout)
    result = predict_catalogue(index, heldout, predicted / "catalogue.fits", truth=heldout / "provabgs.h5",
                               work=predicted / "features.zarr", report_dir=predicted, seed=seed, progress=progress)
    metrics["timings_s"]["predict"] = time.perf_counter() - t
    metrics["predict"] = {key: result[key] for key in ("catalogue", "n_galaxies", "n_predicted", "n_ood", "truth",
                                                       "metrics_file")}
    return metrics
