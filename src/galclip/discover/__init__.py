"""Discovery over an index: "find more like these" from marked galaxies, and the most unusual galaxies.

    >>> import galclip
    >>> index = galclip.open_index("galclip-demo/index")
    >>> found = index.rank(positives=[tid1, tid2, tid3], negatives=[tid4], space="image-features", n=50)
    >>> found["candidates"][0]            # {"rank": 1, "score", "targetid", ..., "prediction"}
    >>> odd = index.anomalies(space="embedding", n=20)

The records are those ``galclip rank --json`` and ``galclip anomalies --json`` print and ``/api/rank`` returns
(:mod:`galclip.discover.candidates`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from galclip.discover import candidates
from galclip.discover.marks import Marks
from galclip.discover.rank import ANOMALY_K, ANOMALY_SAMPLE, Ranking, anomalies, rank
from galclip.discover.spaces import SPACES, Space, held_spaces, open_space
from galclip.index import search

KEEP_ANOMALIES = 1000  # the anomaly ranking is kept this deep, so a page asking for fewer does not compute again


class Index(search.Index):
    """An index folder (:class:`galclip.index.search.Index`) that can also rank its galaxies."""

    def spaces(self) -> tuple[str, ...]:
        """The spaces this index can rank in (the embedding, and each feature space its stores hold)."""
        return held_spaces(self)

    def space(self, name: str = "embedding", seed: int = 0) -> Space:
        """Space ``name`` (one of ``SPACES``), opened once per name and seed (its standardisation is kept)."""
        key = ("space", name, seed)
        if key not in self._cache:
            self._cache[key] = open_space(self, name, seed)
        return self._cache[key]

    def ranking(
        self,
        positives: Iterable[int],
        negatives: Iterable[int] = (),
        space: str = "embedding",
        n: int = 100,
        seed: int = 0,
    ) -> Ranking:
        """The :class:`~galclip.discover.rank.Ranking` behind :meth:`rank`."""
        marks = Marks(tuple(dict.fromkeys(map(int, positives))), tuple(dict.fromkeys(map(int, negatives))))
        marks.check()
        return rank(self.space(space, seed), marks, n, seed)

    def rank(
        self,
        positives: Iterable[int],
        negatives: Iterable[int] = (),
        space: str = "embedding",
        n: int = 100,
        seed: int = 0,
    ) -> dict:
        """The ``n`` galaxies most like ``positives`` (targetids) and unlike ``negatives`` in ``space``, the marked
        ones left out: {"kind", "space", "scorer", ..., "candidates": [records, best first]}."""
        return candidates.result(self, self.ranking(positives, negatives, space, n, seed))

    def anomaly_ranking(
        self, space: str = "embedding", n: int = 100, k: int = ANOMALY_K, sample: int = ANOMALY_SAMPLE, seed: int = 0
    ) -> Ranking:
        """The :class:`~galclip.discover.rank.Ranking` behind :meth:`anomalies`: computed once per space, k, sample
        and seed for the top ``max(n, KEEP_ANOMALIES)`` (one pass at a time), then cut to ``n``."""
        key = ("anomalies", space, k, sample, seed)
        with self._cache.setdefault("anomaly_lock", threading.Lock()):  # concurrent requests wait for one pass
            kept = self._cache.get(key)
            if kept is None or len(kept.positions) < n:
                sp = self.space(space, seed)
                kept = anomalies(sp, max(n, min(KEEP_ANOMALIES, len(sp))), k, sample, seed)
                self._cache[key] = kept
        return kept.top(n)

    def anomalies(
        self, space: str = "embedding", n: int = 100, k: int = ANOMALY_K, sample: int = ANOMALY_SAMPLE, seed: int = 0
    ) -> dict:
        """The ``n`` most unusual galaxies in ``space`` (mean cosine distance to their ``k`` nearest among ``sample``
        random ones), as :meth:`rank`'s answer."""
        return candidates.result(self, self.anomaly_ranking(space, n, k, sample, seed))


def open_index(path: str | Path, verify_hashes: bool = False) -> Index:
    """:func:`galclip.index.search.open_index`, as a discovery :class:`Index`."""
    return search.open_index(path, verify_hashes, cls=Index)


__all__ = ["Index", "Marks", "Ranking", "SPACES", "open_index", "rank", "anomalies"]
