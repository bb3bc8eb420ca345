"""The demo pipeline: mock survey -> extract -> heads -> evaluate, timing each stage."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from galclip.config import EvalConfig, ExtractConfig, HeadConfig, MockConfig

logger = logging.getLogger(__name__)


def run_demo(pairs: int, out: str | Path, epochs: int = 80, umap: bool = True, seed: int = 0, progress: bool = True) -> dict:
    """Run every stage into ``out`` (data/, features.zarr, heads/, report/); returns the metrics."""
    from galclip.data.mock.survey import generate_mock
    from galclip.evaluate.pipeline import evaluate_store
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads

    out = Path(out)
    data, store, heads, report = out / "data", out / "features.zarr", out / "heads", out / "report"
    timings: dict[str, float] = {}
    for path in (data, store, heads, report):  # a demo always starts from scratch
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

    return evaluate_store(store, heads, report, EvalConfig(umap=umap, seed=seed), extra_metrics={"timings_s": timings})
