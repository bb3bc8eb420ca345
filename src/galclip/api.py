"""galclip from Python: open a store, load heads, embed, open an index and search it.

    >>> import galclip
    >>> store = galclip.open_store("galclip-demo/features.zarr")
    >>> heads = galclip.load_heads("galclip-demo/heads")
    >>> z = galclip.embed(store, heads, "image")          # (N, 128) unit vectors
    >>> index = galclip.open_index("galclip-demo/index")
    >>> hit = index.search(targetid=..., query="image", target="spectrum", k=5)
    >>> hit["neighbours"], hit["prediction"]["redshift"]  # {"value", "lo", "hi"}: the catalogue's numbers
    >>> galclip.search_survey_pair(index, "new/survey.h5", targetid=..., query="image")  # a pair not indexed

The search records are those ``galclip search --json`` prints and ``/api/search`` returns; ``prediction`` is the
one zero-shot predictor's (the index's labelled train-split galaxies in the query's modality, k = 16), the same
numbers as a ``galclip predict`` catalogue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from galclip.discover import Index
from galclip.discover import open_index as _open_index
from galclip.embed_survey import embed_survey_pair, search_survey_pair
from galclip.heads.checkpoint import load_heads as _load_heads
from galclip.heads.models import CLIPHeads
from galclip.index.embed import embed as _embed
from galclip.store import FeatureStore


def open_store(path: str | Path) -> FeatureStore:
    """A feature store, read-only: ``n``, ``feature_arrays``, ``provenance``, ``read_meta("targetid" |
    "split" | "label_redshift" | "label_log_mstar" | "redshift")``, ``load()`` for the arrays."""
    return FeatureStore.open(path)


def load_heads(path: str | Path, store: FeatureStore | None = None, device: str = "cpu") -> CLIPHeads:
    """Trained heads from ``heads.pt`` or a heads folder, in eval mode; with ``store``, refused unless
    they were trained on it."""
    return _load_heads(path, store, device)[0]


def embed(store: FeatureStore, heads: CLIPHeads, modality: str) -> np.ndarray:
    """(N, 128) float32 unit vectors of ``modality`` ("image" or "spectrum") for the store's readable
    rows, in store order (``np.flatnonzero(store.require_complete())``)."""
    return _embed(store, heads, modality)


def open_index(path: str | Path) -> Index:
    """An index folder from ``galclip index``: ``.search(targetid=, query=, target=, k=)``,
    ``.search_embedding(vector, target=, k=)``, ``.predict(vectors, modality)`` (the zero-shot predictor),
    ``.rank(positives, negatives=(), space=, n=)`` and ``.anomalies(space=, n=)`` (:mod:`galclip.discover`)."""
    return _open_index(path)


__all__ = ["open_store", "load_heads", "embed", "open_index", "embed_survey_pair", "search_survey_pair"]
