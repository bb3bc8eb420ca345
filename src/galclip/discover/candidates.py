"""A ranking's candidates as records (``galclip rank --json``, ``/api/rank``, ``Index.rank``) and as a catalogue in
every format ``galclip predict`` writes (:mod:`galclip.predict.catalogue`, so its checksums and ``galclip check``
hold).

One record per candidate, best first::

    {"rank", "score", "targetid", "ra", "dec", <each label the index holds>, "has_image", "has_spectrum",
     "prediction": the zero-shot predictor's record (as in a search), or null}

The catalogue's columns: TARGETID, RA, DEC (when the index has positions), RANK (1 = best), SCORE, HAS_IMAGE,
HAS_SPECTRUM, then the zero-shot columns of a ``galclip predict`` catalogue (per label P_PRED, P_LO, P_HI;
SIM_TOP1, N_NEIGHBOURS, OOD), from the same predictor: a candidate's image embedding where it has an image, else its
spectrum's, itself left out of its own neighbours.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from galclip.atomic import atomic_path
from galclip.discover.rank import Ranking
from galclip.index.search import Index, float_or_none
from galclip.index.zero_shot import DEFAULT_K
from galclip.predict.catalogue import (
    CatalogueWriter,
    Column,
    catalogue_columns,
    check_output,
    empty_rows,
    format_for,
)
from galclip.provenance import code_version, sha256_file
from galclip.vocabulary import LABELS, MODALITIES, label_info

logger = logging.getLogger(__name__)

RANK_COLUMNS = (
    Column("RANK", "i4", "J", "", "rank: 1 is the best candidate"),
    Column("SCORE", "f8", "D", "", "score: log-odds, similarity or unusualness"),
    Column("HAS_IMAGE", "?", "L", "", "the galaxy has an image in the index"),
    Column("HAS_SPECTRUM", "?", "L", "", "the galaxy has a spectrum in the index"),
)


def _predictions(index: Index, positions: np.ndarray) -> list[dict | None]:
    """The zero-shot prediction record of each galaxy at ``positions``: from its image, else its spectrum."""
    out: list[dict | None] = [None] * len(positions)
    left = np.ones(len(positions), bool)
    for m in MODALITIES:
        if m not in index.embeddings:
            continue
        sel = np.flatnonzero(left & (index.vector_ids(m, positions) >= 0))
        if not len(sel):
            continue
        tid = index.rows["targetid"][positions[sel]]
        for i, rec in zip(sel, index.predict(index.vectors_at(m, positions[sel]), m, tid)):
            out[i] = rec
        left[sel] = False
    return out


def records(index: Index, ranking: Ranking) -> list[dict]:
    """The candidates' records, best first (see the module)."""
    preds = _predictions(index, ranking.positions)
    has = {m: index.vector_ids(m, ranking.positions) >= 0 for m in MODALITIES}
    out = []
    for r, (pos, score) in enumerate(zip(ranking.positions, ranking.scores)):
        pos = int(pos)
        rec = {"rank": r + 1, "score": float(score), "targetid": int(index.rows["targetid"][pos])}
        if "ra" in index.rows:
            rec["ra"], rec["dec"] = float_or_none(index.rows["ra"][pos]), float_or_none(index.rows["dec"][pos])
        rec.update(index.label_record(pos))
        rec.update(has_image=bool(has["image"][r]), has_spectrum=bool(has["spectrum"][r]), prediction=preds[r])
        out.append(rec)
    return out


def result(index: Index, ranking: Ranking) -> dict:
    """The whole answer: {"kind", "space", "scorer", "positive", "negative", "scored", "seconds",
    "seconds_per_million", "labels", "candidates": records}. Targetids of marks as strings (JavaScript-safe)."""
    return {
        "kind": ranking.kind,
        "space": ranking.space,
        "scorer": ranking.scorer,
        "positive": [str(t) for t in ranking.marks.positive],
        "negative": [str(t) for t in ranking.marks.negative],
        "scored": ranking.scored,
        "seconds": ranking.seconds,
        "seconds_per_million": ranking.seconds_per_million,
        "labels": index.label_titles(),
        "candidates": records(index, ranking),
    }


def columns_for(index: Index) -> tuple[Column, ...]:
    """The candidate catalogue's columns (see the module)."""
    base = catalogue_columns(index.label_names or LABELS, "ra" in index.rows)
    at = 3 if "ra" in index.rows else 1
    return (*base[:at], *RANK_COLUMNS, *base[at:])


def header(index: Index, ranking: Ranking) -> dict[str, object]:
    """The candidate catalogue's provenance (FITS keywords, 8 characters at most)."""
    return {
        "GCVERS": str(code_version())[:60],
        "RANKING": ranking.kind,
        "SPACE": ranking.space,
        "SCORER": ranking.scorer[:68],
        "NPOS": len(ranking.marks.positive),
        "NNEG": len(ranking.marks.negative),
        "NSCORED": ranking.scored,
        "MARKED": "left out",
        "KNN_K": DEFAULT_K,
        "INDEXSHA": sha256_file(Path(index.path) / "index.json")[:16],
        "HEADSSHA": index.sidecar["heads_sha256"][:16],
    }


def catalogue_rows(index: Index, ranking: Ranking) -> np.ndarray:
    """The candidate catalogue's rows (``columns_for(index)``), best first."""
    cols = columns_for(index)
    rows = empty_rows(len(ranking.positions), cols)
    pos = ranking.positions
    rows["TARGETID"] = index.rows["targetid"][pos]
    if "ra" in index.rows:
        rows["RA"], rows["DEC"] = index.rows["ra"][pos], index.rows["dec"][pos]
    rows["RANK"] = np.arange(1, len(pos) + 1)
    rows["SCORE"] = ranking.scores
    rows["HAS_IMAGE"] = index.vector_ids("image", pos) >= 0
    rows["HAS_SPECTRUM"] = index.vector_ids("spectrum", pos) >= 0
    for i, rec in enumerate(_predictions(index, pos)):
        if rec is None:
            continue
        for label in index.label_names:
            if label in rec:
                prefix = label_info(label)[1]
                for col, key in zip(("_PRED", "_LO", "_HI"), ("value", "lo", "hi")):
                    rows[prefix + col][i] = rec[label][key]
        rows["SIM_TOP1"][i], rows["N_NEIGHBOURS"][i], rows["OOD"][i] = rec["similarity"], rec["k"], rec["ood"]
    return rows


def write_catalogue(
    index: Index, ranking: Ranking, out: str | Path, fmt: str | None = None, overwrite: bool = False
) -> Path:
    """Write the candidates to ``out`` (format from the suffix, or ``fmt``), atomically; refuses to replace a file
    that is not a galclip catalogue unless ``overwrite``."""
    out = Path(out)
    fmt = format_for(out, fmt)
    check_output(out, overwrite, fmt)
    rows = catalogue_rows(index, ranking)
    with atomic_path(out) as tmp:
        writer = CatalogueWriter(tmp, fmt, len(rows), header(index, ranking), final=out, columns=columns_for(index))
        try:
            writer.write(rows)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    logger.info("%d candidates -> %s", len(rows), out)
    return out
