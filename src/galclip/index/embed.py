"""A store's galaxies in the shared 128-d space: its features through the heads, L2-normalised, block by block.

The index is built from these vectors, and ``galclip predict`` embeds its input store with the same function and
the same blocks, so a galaxy gets the same vector (to the bit) in the index and in a catalogue."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from galclip.errors import GalclipError
from galclip.neighbours import l2_normalise
from galclip.store import FeatureStore
from galclip.vocabulary import MODALITIES

if TYPE_CHECKING:
    from galclip.heads.models import CLIPHeads

logger = logging.getLogger(__name__)

BLOCK = 4096  # rows of features in memory at once


def embed_store(
    store: FeatureStore,
    heads: CLIPHeads,
    rows: np.ndarray,
    batch: int = BLOCK,
    modalities: tuple[str, ...] = MODALITIES,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield (first position in ``rows``, {modality: (b, 128) float32 unit vectors}) for the store rows ``rows``
    (sorted), ``batch`` rows at a time: at most one block of features is in memory."""
    for lo in range(0, len(rows), batch):
        sel = rows[lo : lo + batch]
        a, b = int(sel[0]), int(sel[-1]) + 1  # complete shards are contiguous blocks of rows
        out = {}
        for m in modalities:
            feats = store.read(f"{m}_features", a, b)
            if b - a != len(sel):  # rows left out (quarantined, incomplete shards): pick the rest
                feats = feats[sel - a]
            out[m] = l2_normalise(heads.embed_modality(m, feats))
        yield lo, out


def embed(
    store: FeatureStore, heads: CLIPHeads, modality: str, batch: int = BLOCK, allow_partial: bool = False
) -> np.ndarray:
    """(N, 128) float32 unit vectors of ``modality`` for the store's readable rows, streamed ``batch`` rows at a time.

    The rows are ``np.flatnonzero(store.require_complete())``: every row of a finished store
    without quarantined inputs, in store order."""
    if modality not in MODALITIES:
        raise GalclipError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    rows = np.flatnonzero(store.require_complete(allow_partial))
    out = np.empty((len(rows), heads.image.sizes[-1]), np.float32)
    for lo, z in embed_store(store, heads, rows, batch, (modality,)):
        out[lo : lo + len(z[modality])] = z[modality]
    return out
