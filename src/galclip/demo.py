"""The demo pipeline: mock survey -> extract -> heads -> evaluate -> index -> predict, timing each stage."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from galclip.config import EvalConfig, ExtractConfig, HeadConfig, MockConfig

logger = logging.getLogger(__name__)


def _is_galclip_store(path: Path) -> bool:
    try:
        return "galclip" in (json.loads((path / "zarr.json").read_text()).get("attributes") or {})
    except (OSError, ValueError, AttributeError):
        return False


def _part_problem(path: Path, command: str, names: tuple[str, ...] | set[str]) -> str | None:
    """Why the demo may not remove ``path`` (None: it is wholly galclip's ``command`` output)."""
    from galclip.outputs import foreign_entries, owner

    if command == "store":
        return None if _is_galclip_store(path) else "is not a galclip feature store"
    if not path.is_dir():
        return "is a file, not a folder the demo writes"
    found = owner(path)
    if found not in (None, command):
        return f"is the output of 'galclip {found}'"
    foreign = foreign_entries(path, names)
    return f"also holds {', '.join(foreign[:5])}, which galclip did not write" if foreign else None


def clear_earlier_demo(out: Path, overwrite: bool = False) -> None:
    """Remove what an earlier demo wrote in ``out``, refusing first (with nothing removed) when ``out`` is not an
    earlier demo's folder (unless ``overwrite``), or when any folder the demo writes holds something galclip did
    not write there."""
    from galclip.data.mock.survey import MOCK_NAMES
    from galclip.evaluate.pipeline import REPORT_NAMES
    from galclip.heads.train import HEADS_OUTPUT_NAMES
    from galclip.index.build import INDEX_FILES
    from galclip.outputs import OutputExistsError, check_output_dir, owner
    from galclip.predict.run import PREDICT_NAMES

    names = {
        "mock": MOCK_NAMES,
        "heads": HEADS_OUTPUT_NAMES,
        "evaluate": REPORT_NAMES,
        "index": INDEX_FILES,
        "predict": PREDICT_NAMES,
        "store": (),
    }
    if out.is_dir() and not overwrite and owner(out) is None and not is_legacy_demo(out):
        check_output_dir(out, "demo", (), overwrite, option="--out")  # refuses what it holds, by name
    check_output_dir(out, "demo", DEMO_PARTS, overwrite, option="--out")
    if not out.is_dir():
        return
    doomed = []
    for part, command in DEMO_PARTS.items():
        path = out / part
        if not path.exists():
            continue
        if part.endswith(".lock"):
            if path.is_file() and path.stat().st_size < 4096:
                doomed.append(path)
            continue
        problem = _part_problem(path, command, names[command])
        if problem:
            raise OutputExistsError(
                f"{path}: {problem}; the demo replaces {part} and never deletes what galclip did "
                "not write. Move it out, or choose another --out"
            )
        doomed.append(path)
    for path in doomed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if doomed:
        logger.info("replacing the earlier demo's %s in %s", ", ".join(p.name for p in doomed), out)


def is_legacy_demo(out: Path) -> bool:
    """An unmarked folder an earlier galclip's demo wrote: every entry a demo part, the demo's own heldout/ and
    predict/ among them (a folder of the README's pipeline has data/, heads/ ... but not those two)."""
    from galclip.outputs import foreign_entries

    return (out / "heldout").is_dir() and (out / "predict").is_dir() and not foreign_entries(out, DEMO_PARTS)


DEMO_PARTS = {
    "data": "mock",
    "features.zarr": "store",
    "features.zarr.lock": "lock",
    "heads": "heads",
    "report": "evaluate",
    "index": "index",
    "heldout": "mock",
    "predict": "predict",
}


def run_demo(
    pairs: int,
    out: str | Path,
    epochs: int = 80,
    umap: bool = True,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Run every stage into ``out`` (data/, features.zarr, heads/, report/, index/, then heldout/ and predict/: a
    zero-shot catalogue of image-only galaxies scored against their truth); returns the metrics, with the
    catalogue's under "predict".

    ``out`` must be new, empty or an earlier demo's folder (``overwrite``: any folder); what an earlier demo wrote
    there is replaced, and nothing galclip did not write is ever removed (:func:`clear_earlier_demo`)."""
    from galclip.outputs import owner, remove_if_unused, write_marker

    out = Path(out)
    clear_earlier_demo(out, overwrite)  # a demo always starts from scratch
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    if created or owner(out) == "demo" or not any(out.iterdir()):
        write_marker(out, "demo")
    try:
        return _stages(out, pairs, epochs, umap, seed, progress)
    except BaseException:
        if created:
            remove_if_unused(out)
        raise


def _stages(out: Path, pairs: int, epochs: int, umap: bool, seed: int, progress: bool) -> dict:
    from galclip.data.mock.survey import generate_mock
    from galclip.evaluate.pipeline import evaluate_store
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.index.build import build_indexes
    from galclip.predict.run import predict_catalogue

    data, store, heads, report, index = (
        out / "data",
        out / "features.zarr",
        out / "heads",
        out / "report",
        out / "index",
    )
    heldout, predicted = out / "heldout", out / "predict"
    timings: dict[str, float] = {}
    t = time.perf_counter()
    generate_mock(MockConfig(pairs=pairs, seed=seed), data)
    timings["mock"] = time.perf_counter() - t

    t = time.perf_counter()
    run_extraction(data, store, ExtractConfig(seed=seed), progress=progress)
    timings["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    train_heads(store, heads, HeadConfig(epochs=epochs, seed=seed), progress=progress)
    timings["heads"] = time.perf_counter() - t

    metrics = evaluate_store(
        store, heads, report, EvalConfig(umap=umap, seed=seed), extra_metrics={"timings_s": timings}
    )

    t = time.perf_counter()  # for 'galclip serve' and galclip.open_index; after evaluate, so metrics.json is as before
    build_indexes(store, heads, index, seed=seed, progress=progress, embedding_map=umap)
    metrics["timings_s"]["index"] = time.perf_counter() - t

    # the use AstroCLIP is for: galaxies with only an image, catalogued from their labelled neighbours
    t = time.perf_counter()
    generate_mock(MockConfig(pairs=heldout_pairs(pairs), seed=seed + 1000, modality="image"), heldout)
    result = predict_catalogue(
        index,
        heldout,
        predicted / "catalogue.fits",
        truth=heldout / "provabgs.h5",
        work=predicted / "features.zarr",
        report_dir=predicted,
        seed=seed,
        progress=progress,
    )
    metrics["timings_s"]["predict"] = time.perf_counter() - t
    metrics["predict"] = {
        key: result[key] for key in ("catalogue", "n_galaxies", "n_predicted", "n_ood", "truth", "metrics_file")
    }
    return metrics


def heldout_pairs(pairs: int) -> int:
    """How many image-only galaxies the demo catalogues: a tenth of its pairs, at least 64."""
    return max(64, pairs // 10)
