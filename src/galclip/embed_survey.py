"""A galaxy's survey rows in the shared 128-d space: the index's store's encoders and preprocessing, then its heads.

The one place where survey pixels and fluxes become a search vector outside an extraction: ``galclip search
--data``, the Python API and the service call it, then search the index with the vector. It sits above
``index/``, which knows only vectors, rows and files.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import closing
from pathlib import Path

import numpy as np

from galclip.errors import InputError
from galclip.index.search import Index

logger = logging.getLogger(__name__)


def embed_survey_pair(
    index: Index, data: str | Path, targetid: int | None = None, device: str = "auto"
) -> tuple[dict[str, np.ndarray], float | None, int]:
    """Embed galaxy ``targetid`` of a survey file (any layout galclip reads; in the index's store or not) as the index
    was built; ``targetid`` None takes the file's only galaxy. A file holding one modality gives that one.

    Returns ({modality: (1, 128) float32 unit vector} for each modality the file holds, the galaxy's survey redshift
    or None, its targetid). Refuses when the heads file no longer matches the one the index was built from."""
    import torch

    from galclip.data.sources import open_survey
    from galclip.extract.encoders import Encoders
    from galclip.extract.provenance import config_from_provenance
    from galclip.extract.validate import bad_row_codes
    from galclip.heads.checkpoint import load_heads
    from galclip.neighbours import l2_normalise
    from galclip.provenance import resolve_device
    from galclip.store.quarantine import REASONS

    heads_file = index.check_heads()
    store = index.open_store()
    with closing(open_survey(data, require=())) as reader:
        ids = reader.targetids()
        if targetid is None:
            if len(ids) != 1:
                raise InputError(
                    f"{data}: holds {len(ids)} galaxies (e.g. targetid {int(ids[0])}); name one with --targetid"
                )
            targetid = int(ids[0])
        hit = np.flatnonzero(ids == targetid)
        if hit.size == 0:
            raise InputError(f"{data}: no row with targetid {targetid} (it holds {len(ids)}, e.g. {int(ids[0])})")
        row = int(hit[0])
        batch = reader.read(row, row + 1)
        modalities = reader.modalities
        code = int(bad_row_codes(batch.image, batch.spectrum)[0])
        if code:
            raise InputError(f"{reader.locate(row)}: targetid {targetid}: {REASONS[code]}; it cannot be embedded")
    config = config_from_provenance(store.provenance, variants=0, spectrum_variants=0, device=device, backend=None)
    config = dataclasses.replace(config, modalities=modalities)
    tensor = lambda a: None if a is None else torch.from_numpy(a)
    feats = Encoders(config, resolve_device(device))(
        tensor(batch.image), tensor(batch.spectrum), batch.targetid, tensor(batch.spectrum_ivar)
    )
    heads, _ = load_heads(heads_file, store)
    vectors = {m: l2_normalise(heads.embed_modality(m, feats[f"{m}_features"])) for m in modalities}
    z = float(batch.redshift[0])
    return vectors, (z if np.isfinite(z) else None), int(targetid)


def search_survey_pair(
    index: Index,
    data: str | Path,
    targetid: int | None = None,
    query: str | None = "image",
    target: str = "image",
    k: int = 5,
    device: str = "auto",
    **options,
) -> dict:
    """``Index.search`` for a galaxy read from the survey file ``data`` and embedded here (``targetid`` None: the
    file's only galaxy): the same records, with ``query.source`` the file. ``query`` "both" needs a file holding both
    modalities; None takes the modality the file holds (the image when it holds both). ``options``: filters and
    dedup_arcsec, as for ``Index.search``."""
    from galclip.neighbours import l2_normalise

    vectors, survey_redshift, targetid = embed_survey_pair(index, data, targetid, device)
    if query is None:
        query = "image" if "image" in vectors else next(iter(vectors))
    if query == "both":
        if len(vectors) < 2:
            raise InputError(
                f"{data}: holds only the {next(iter(vectors))} of targetid {targetid}; a query by both modalities "
                f"needs a file with both: search with --query {next(iter(vectors))}"
            )
        vector = l2_normalise(vectors["image"] + vectors["spectrum"]).astype(np.float32)
    elif query not in vectors:
        raise InputError(
            f"{data}: holds no {query} of targetid {targetid} (only {', '.join(vectors)}); search with "
            f"--query {next(iter(vectors))}"
        )
    else:
        vector = vectors[query]
    return index.search(
        targetid,
        query=query,
        target=target,
        k=k,
        vector=vector,
        source=str(data),
        survey_redshift=survey_redshift,
        **options,
    )
