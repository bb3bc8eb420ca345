"""A galaxy's survey rows in the shared 128-d space: the index's store's encoders and preprocessing, then its heads.

The one place where survey pixels and fluxes become a search vector outside an extraction: ``galclip search
--data``, the Python API and the service call it, then search the index with the vector. It sits above
``index/``, which knows only vectors, rows and files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from galclip.errors import InputError
from galclip.index.search import Index

logger = logging.getLogger(__name__)


def embed_survey_pair(
    index: Index, data: str | Path, targetid: int, device: str = "auto"
) -> tuple[dict[str, np.ndarray], float | None]:
    """Embed the pair ``targetid`` of a survey file (in the index's store or not) as the index was built.

    Returns ({"image": (1, 128), "spectrum": (1, 128)} float32 unit vectors, the pair's survey redshift or None).
    Refuses when the heads file no longer matches the one the index was built from."""
    import torch

    from galclip.data.survey import SurveyReader
    from galclip.extract.encoders import Encoders
    from galclip.extract.provenance import config_from_provenance
    from galclip.extract.validate import bad_row_codes
    from galclip.heads.checkpoint import load_heads
    from galclip.neighbours import l2_normalise
    from galclip.provenance import resolve_device
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
    feats = Encoders(config, resolve_device(device))(
        torch.from_numpy(batch.image), torch.from_numpy(batch.spectrum), batch.targetid
    )
    heads, _ = load_heads(heads_file, store)
    vectors = {m: l2_normalise(heads.embed_modality(m, feats[f"{m}_features"])) for m in ("image", "spectrum")}
    z = float(batch.redshift[0])
    return vectors, (z if np.isfinite(z) else None)


def search_survey_pair(
    index: Index,
    data: str | Path,
    targetid: int,
    query: str = "image",
    target: str = "image",
    k: int = 5,
    device: str = "auto",
) -> dict:
    """``Index.search`` for a pair read from the survey file ``data`` and embedded here: the same records, with
    ``query.source`` the file."""
    vectors, survey_redshift = embed_survey_pair(index, data, targetid, device)
    return index.search(
        targetid,
        query=query,
        target=target,
        k=k,
        vector=vectors[query],
        source=str(data),
        survey_redshift=survey_redshift,
    )
