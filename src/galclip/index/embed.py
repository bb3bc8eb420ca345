"""Embeddings in the shared 128-d space: a whole store's, or one new pair's from a survey file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from galclip.errors import GalclipError, InputError
from galclip.heads.checkpoint import load_heads
from galclip.index.build import MODALITIES, embed_store
from galclip.provenance import resolve_device
from galclip.store import FeatureStore

if TYPE_CHECKING:
    from galclip.heads.models import CLIPHeads
    from galclip.index.search import Index

logger = logging.getLogger(__name__)


def embed(store: FeatureStore, heads: CLIPHeads, modality: str, batch: int = 4096,
          allow_partial: bool = False) -> np.ndarray:
    """(N, 128) float32 unit vectors of ``modality`` for the store's readable rows, streamed ``batch`` rows at a time.

    The rows are ``np.flatnonzero(store.require_complete())``: every row of a finished store
    without quarantined inputs, in store order."""
    if modality not in MODALITIES:
        raise GalclipError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    rows = np.flatnonzero(store.require_complete(allow_partial))
    out = np.empty((len(rows), heads.image.sizes[-1]), np.float32)
    for lo, zi, zs in embed_store(store, heads, rows, batch):
        out[lo:lo + len(zi)] = zi if modality == "image" else zs
    return out


def embed_new_pair(index: Index, data: str | Path, targetid: int, device: str = "auto") -> tuple[dict[str, np.ndarray], float | None]:
    """Embed one pair of a survey file that is not (necessarily) in the store, as the index was built:
    the store's encoders and preprocessing, then the index's heads.

    Returns ({"image": (1, 128), "spectrum": (1, 128)} L2-normalised, the pair's survey redshift or None).
    Refuses when the heads file no longer matches the one the index was built from."""
    import torch

    from galclip.extract.provenance import config_from_provenance
    from galclip.data.survey import SurveyReader
    from galclip.extract.encoders import Encoders
    from galclip.extract.validate import bad_row_codes
    from galclip.neighbours import l2_normalise
    from galclip.store.quarantine import REASONS

    heads_file = index.check_heads()
    store = index.open_store()
    config = config_from_provenance(store.provenance, variants=0, spectrum_variants=0, device=device)
    with SurveyReader(data) as reader:
        hit = np.flatnonzero(reader.targetids() == targetid)
        if hit.size == 0:
            raise InputError(f"{data}: no row with targetid {targetid}")
        row = int(hit[0])
        batch = reader.read(row, row + 1)
        code = int(bad_row_codes(batch.image, batch.spectrum)[0])
        if code:
            raise InputError(f"{reader.locate(row)}: targetid {targetid}: {REASONS[code]}; it cannot be embedded")
    feats = Encoders(config, resolve_device(device))(torch.from_numpy(batch.image), torch.from_numpy(batch.spectrum),
                                                     batch.targetid)
    heads, _ = load_heads(heads_file, store)
    zi, zs = heads.embed(feats["image_features"], feats["spectrum_features"])
    z = float(batch.redshift[0])
    return {"image": l2_normalise(zi), "spectrum": l2_normalise(zs)}, (z if np.isfinite(z) else None)
