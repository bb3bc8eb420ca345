"""Find more like these: score every galaxy of an index from a few marked ones, and rank galaxies by how unusual they
are. Both stream the space block by block (:mod:`galclip.discover.spaces`), keeping only the best ``n``.

The scorer (:func:`fit_scorer`), on the space's unit vectors x:

- one positive and no negative: the cosine similarity to it, x . p;
- positives only: a logistic regression of the positives against a seeded random sample of the space's galaxies
  taken as unlabelled negatives (``BACKGROUND`` of them), the standard positive-unlabelled baseline;
- with negatives: the same regression with the marked negatives added; they carry as much weight in all as the
  unlabelled sample, so a person's "not this" counts even among thousands of unlabelled galaxies.

Positives and negatives weigh equally in all (balanced classes); L2 regularisation ``C``. The score is the
regression's log-odds, w . x + b. The marked galaxies are left out of the ranking.

Unusualness (:func:`anomalies`): the mean cosine distance, 1 - x . y, from each galaxy to its ``k`` nearest
neighbours among a seeded reference sample of the space (``ANOMALY_SAMPLE`` galaxies, itself left out), exact
(FAISS brute force); cost per galaxy is the sample's size times the dimension.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from galclip.discover.marks import Marks
from galclip.discover.spaces import Space
from galclip.errors import InputError
from galclip.index.search import NotIndexed

logger = logging.getLogger(__name__)

BACKGROUND = 4096  # unlabelled galaxies drawn as negatives
C = 1.0  # inverse L2 regularisation of the logistic regression (the weights sum to the training set's size)
ANOMALY_K = 10
ANOMALY_SAMPLE = 20_000


@dataclass(frozen=True)
class Scorer:
    """A linear score w . x + b over unit vectors x (d,); ``kind`` "similarity" or "logistic"."""

    w: np.ndarray
    b: float
    kind: str
    n_positive: int
    n_negative: int
    n_background: int

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(m, d) -> (m,) float64 scores."""
        return (np.asarray(x, np.float32) @ self.w.astype(np.float32)).astype(np.float64) + self.b

    def describe(self) -> str:
        if self.kind == "similarity":
            return "cosine similarity to the one positive"
        with_neg = f", {self.n_negative} marked negatives" if self.n_negative else ""
        return (
            f"logistic regression (C {C:g}): {self.n_positive} positives against {self.n_background} random "
            f"unlabelled galaxies{with_neg}"
        )


def fit_scorer(
    positives: np.ndarray, negatives: np.ndarray, background: np.ndarray, seed: int = 0, c: float = C
) -> Scorer:
    """The scorer from (p, d) positive, (q, d) negative and (u, d) unlabelled unit vectors (see the module)."""
    from sklearn.linear_model import LogisticRegression

    p, q, u = len(positives), len(negatives), len(background)
    if p == 1 and q == 0:
        return Scorer(np.asarray(positives[0], np.float64), 0.0, "similarity", 1, 0, 0)
    x = np.concatenate([positives, negatives, background]).astype(np.float64)
    y = np.concatenate([np.ones(p), np.zeros(q + u)])
    neg_share = 0.5 if q else 0.0  # of the negative class's weight: the marked negatives', the rest the sample's
    weight = np.concatenate(
        [np.full(p, 1.0 / p), np.full(q, neg_share / max(q, 1)), np.full(u, (1.0 - neg_share) / max(u, 1))]
    )
    weight *= len(x) / weight.sum()
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit(x, y, sample_weight=weight)
    return Scorer(model.coef_[0].copy(), float(model.intercept_[0]), "logistic", p, q, u)


@dataclass
class Ranking:
    """The best ``n`` galaxies of a space: positions (n,) int64 index rows, scores (n,) float64, best first; what
    scored them and how long it took."""

    space: str
    kind: str  # "rank" or "anomalies"
    positions: np.ndarray
    scores: np.ndarray
    scorer: str
    scored: int  # galaxies scored
    seconds: float
    marks: Marks = field(default_factory=Marks)

    scorer_model: Scorer | None = None  # the fitted scorer of a "rank" ranking

    @property
    def seconds_per_million(self) -> float:
        return self.seconds / max(self.scored, 1) * 1e6

    def top(self, n: int) -> Ranking:
        """The best ``n`` of this ranking."""
        return replace(self, positions=self.positions[:n], scores=self.scores[:n])


class TopN:
    """The ``n`` highest scores seen so far (ties: the lower position first)."""

    def __init__(self, n: int):
        self.n = n
        self.scores = np.zeros(0, np.float64)
        self.positions = np.zeros(0, np.int64)

    def add(self, scores: np.ndarray, positions: np.ndarray) -> None:
        s = np.concatenate([self.scores, scores])
        p = np.concatenate([self.positions, positions])
        if len(s) > self.n:
            keep = np.lexsort((p, -s))[: self.n]  # ties at the cut: the lower position, whatever the blocks
            s, p = s[keep], p[keep]
        self.scores, self.positions = s, p

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.lexsort((self.positions, -self.scores))
        return self.positions[order], self.scores[order]


def _positions(space: Space, targetids: tuple[int, ...], what: str) -> np.ndarray:
    """Index rows of marked targetids; an error naming the first not indexed or not in the space."""
    index = space.index
    out = np.empty(len(targetids), np.int64)
    for i, tid in enumerate(targetids):
        pos = index.find(tid)
        if pos < 0:
            raise NotIndexed(
                f"{what} targetid {tid} is not in the index at {index.path} ({len(index)} galaxies); "
                "check the number (the page's marks file names the index it was made on)"
            )
        out[i] = pos
    lacking = ~space.holds(out)
    if lacking.any():
        tid = targetids[int(np.flatnonzero(lacking)[0])]
        raise InputError(
            f"{what} targetid {tid} has no {space.modality} features, so it has no place in --space {space.name}; "
            "rank in --space embedding, or unmark it"
        )
    return out


def check_n(n: int, available: int, what: str) -> None:
    """Refuse -n outside [1, available]."""
    if n < 1:
        raise InputError(f"-n {n}: ask for at least 1 galaxy")
    if n > available:
        raise InputError(f"-n {n}: {what} {available} galaxies; ask for -n {available} or fewer")


def rank(
    space: Space,
    marks: Marks,
    n: int = 100,
    seed: int = 0,
    block: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> Ranking:
    """The ``n`` galaxies of ``space`` most like ``marks.positive`` (and unlike ``marks.negative``), the marked
    ones left out. ``progress``: called with the galaxies scored after each block."""
    t0 = time.perf_counter()
    marks.check()
    if not marks.positive:
        raise InputError("--positive: mark at least one galaxy 'more like this'")
    pos = _positions(space, marks.positive, "positive")
    neg = _positions(space, marks.negative, "negative")
    marked = np.unique(np.concatenate([pos, neg]))
    check_n(n, len(space) - len(marked), f"--space {space.name} holds, besides the {len(marked)} marked,")
    rng = np.random.default_rng([seed, 23])
    background = np.zeros(0, np.int64)
    if not (len(pos) == 1 and not len(neg)):
        pool = len(space) - len(marked)
        take = np.sort(rng.choice(len(space), min(BACKGROUND + len(marked), len(space)), replace=False))
        background = space.at(take)
        background = background[~np.isin(background, marked)][: min(BACKGROUND, pool)]
    scorer = fit_scorer(space.vectors(pos), space.vectors(neg), space.vectors(background), seed)
    top = TopN(n)
    for positions, x in space.blocks(**({"block": block} if block else {})):
        s = scorer(x)
        s[np.isin(positions, marked)] = -np.inf
        top.add(s, positions)
        if progress is not None:
            progress(len(positions))
    positions, scores = top.result()
    seconds = time.perf_counter() - t0
    logger.info("ranked %d galaxies in %s in %.2f s (%s)", len(space), space.name, seconds, scorer.describe())
    return Ranking(space.name, "rank", positions, scores, scorer.describe(), len(space), seconds, marks, scorer)


def anomalies(
    space: Space,
    n: int = 100,
    k: int = ANOMALY_K,
    sample: int = ANOMALY_SAMPLE,
    seed: int = 0,
    block: int | None = None,
    progress: Callable[[int], object] | None = None,
) -> Ranking:
    """The ``n`` galaxies of ``space`` farthest from their ``k`` nearest neighbours among a seeded reference
    sample (see the module)."""
    import faiss

    t0 = time.perf_counter()
    check_n(n, len(space), f"--space {space.name} holds")
    if sample < 2:
        raise InputError(f"--sample {sample}: the neighbours are found among at least 2 galaxies")
    most = min(sample, len(space)) - 1
    if not 1 <= k <= most:
        raise InputError(
            f"-k {k}: choose between 1 and {most} (one less than the --sample of {min(sample, len(space))})"
        )
    rng = np.random.default_rng([seed, 29])
    take = np.sort(rng.choice(len(space), min(sample, len(space)), replace=False))
    ref_positions = space.at(take)
    reference = faiss.IndexFlatIP(space.dim)
    reference.add(space.vectors(ref_positions))
    kk = min(k + 1, len(ref_positions))
    top = TopN(n)
    for positions, x in space.blocks(**({"block": block} if block else {})):
        sims, ids = reference.search(np.ascontiguousarray(x), kk)
        own = ref_positions[np.clip(ids, 0, None)] == positions[:, None]  # a reference galaxy is not its own
        sims = np.where(own, np.nan, sims)
        # the k best that are not the galaxy itself: drop the self match where there is one, else the k+1-th
        keep = np.where(own.any(1, keepdims=True), ~own, np.arange(kk)[None, :] < k)
        dist = 1.0 - np.where(keep, sims, 0.0)
        score = (dist * keep).sum(1) / np.maximum(keep.sum(1), 1)
        top.add(score.astype(np.float64), positions)
        if progress is not None:
            progress(len(positions))
    positions, scores = top.result()
    seconds = time.perf_counter() - t0
    how = f"mean cosine distance to the {k} nearest of {len(ref_positions)} random galaxies"
    logger.info("anomaly scores of %d galaxies in %s in %.2f s", len(space), space.name, seconds)
    return Ranking(space.name, "anomalies", positions, scores, how, len(space), seconds)
