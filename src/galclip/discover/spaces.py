"""The spaces galaxies are ranked in, read block by block from an index and its feature stores.

- ``embedding``: the shared 128-d space, each galaxy's unit embeddings (image, spectrum, or the mean of both,
  renormalised) from the index's memory-mapped vectors;
- ``image-features``: the image encoder's 2048-d backbone features (Stein et al.'s ResNet-50), from the stores;
- ``spectrum-features``: the spectrum encoder's 256-d features (Spender), from the stores.

Backbone features are standardised (mean and standard deviation of a seeded sample of the space's galaxies), then,
as embeddings are, L2-normalised: every space hands out (b, d) float32 unit vectors, so a dot product is a cosine
similarity in all three. A rare morphology the heads never needed for image-spectrum alignment can survive in the
2048-d features though not in the 128-d embedding.

Memory: one block of vectors (``BLOCK`` rows) at a time, whatever the index's size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from galclip.errors import InputError
from galclip.index.search import Index

logger = logging.getLogger(__name__)

SPACES = ("embedding", "image-features", "spectrum-features")
FEATURE_SPACES = {"image-features": "image", "spectrum-features": "spectrum"}  # space -> the modality it needs
BLOCK = 8192  # galaxies whose vectors are in memory at once
STATS_SAMPLE = 4096  # galaxies whose features set the standardisation


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(m, d) float32 rows scaled to unit length in float32 (all-zero rows stay zero): the streamed pass's one
    normalisation (float64 norms cost more than the rest of a ranking)."""
    x = np.asarray(x, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@dataclass
class Space:
    """One space over an index's galaxies: ``positions`` (n,) int64 sorted, the index rows that have a vector in it,
    or None for every row (no array of 8 bytes a galaxy); ``dim`` its dimension. Vectors are (b, dim) float32 unit
    vectors."""

    index: Index
    name: str
    positions: np.ndarray | None
    dim: int
    seed: int = 0
    _stores: dict = field(default_factory=dict, repr=False)
    _stats: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.index) if self.positions is None else len(self.positions)

    def at(self, i: np.ndarray) -> np.ndarray:
        """The index rows of the space's galaxies number ``i`` (in [0, len))."""
        i = np.asarray(i, np.int64)
        return i if self.positions is None else self.positions[i]

    @property
    def modality(self) -> str | None:
        """The modality a feature space needs (None for the embedding space)."""
        return FEATURE_SPACES.get(self.name)

    def holds(self, positions: np.ndarray) -> np.ndarray:
        """(m,) bool: which index rows ``positions`` have a vector in this space."""
        positions = np.asarray(positions, np.int64)
        if self.positions is None:
            return (positions >= 0) & (positions < len(self.index))
        at = np.clip(np.searchsorted(self.positions, positions), 0, max(0, len(self.positions) - 1))
        return (self.positions[at] == positions) if len(self.positions) else np.zeros(len(positions), bool)

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """(m, dim) float32 unit vectors of the galaxies at index rows ``positions`` (each must be in the space)."""
        positions = np.asarray(positions, np.int64)
        if not len(positions):
            return np.zeros((0, self.dim), np.float32)
        order = np.argsort(positions, kind="stable")
        out = np.empty((len(positions), self.dim), np.float32)
        out[order] = self._read(positions[order])
        return out

    def blocks(self, block: int = BLOCK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (positions (b,), vectors (b, dim)) over every galaxy of the space in index order."""
        for lo in range(0, len(self), block):
            pos = self.at(np.arange(lo, min(lo + block, len(self))))
            yield pos, self._read(pos)

    def _read(self, positions: np.ndarray) -> np.ndarray:
        """Vectors of sorted ``positions``."""
        if self.name == "embedding":
            return self._embedding(positions)
        raw = self._features(positions)
        mean, scale = self.stats()
        return unit_rows((raw - mean) / scale)

    def _embedding(self, positions: np.ndarray) -> np.ndarray:
        total = np.zeros((len(positions), self.dim), np.float32)
        for m in self.index.embeddings:
            ids = self.index.vector_ids(m, positions)
            have = ids >= 0
            if have.all() and len(ids) and ids[-1] - ids[0] == len(ids) - 1:  # a contiguous run: one slice
                total += self.index.embeddings[m][ids[0] : ids[-1] + 1]
            elif have.any():
                total[have] += self.index.embeddings[m][ids[have]]
        return unit_rows(total)

    def _store(self, which: int):
        if which not in self._stores:
            self._stores[which] = self.index.open_store(which)
        return self._stores[which]

    def _features(self, positions: np.ndarray) -> np.ndarray:
        """Raw (m, dim) float32 backbone features of sorted ``positions``, each store's shard read once."""
        array = f"{self.modality}_features"
        stores = self.index.rows["store"][positions] if "store" in self.index.rows else np.zeros(len(positions), int)
        rows = self.index.rows["row"][positions]
        out = np.empty((len(positions), self.dim), np.float32)
        for which in np.unique(stores):
            sel = np.flatnonzero(stores == which)
            store, r = self._store(int(which)), rows[sel]
            shard = r // store.rows_per_shard
            cuts = np.flatnonzero(np.diff(shard)) + 1
            for part in np.split(np.arange(len(r)), cuts):  # rows of one shard each: one chunk read per part
                a, b = int(r[part].min()), int(r[part].max()) + 1
                out[sel[part]] = store.read(array, a, b)[r[part] - a]
        return out

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean (dim,), scale (dim,)) of the raw features over a seeded sample of ``STATS_SAMPLE`` galaxies (a
        dimension that does not vary gets scale 1)."""
        if self._stats is None:
            rng = np.random.default_rng([self.seed, 17])
            take = min(STATS_SAMPLE, len(self))
            sample = self.at(np.sort(rng.choice(len(self), take, replace=False)))
            raw = self._features(sample).astype(np.float64)
            mean, sd = raw.mean(0), raw.std(0)
            self._stats = (mean.astype(np.float32), np.where(sd > 1e-12, sd, 1.0).astype(np.float32))
        return self._stats


def held_spaces(index: Index) -> tuple[str, ...]:
    """The spaces ``index`` can rank in: always the embedding; a feature space where its stores hold that modality's
    features."""
    have = set()
    for rec in index.store_records():
        have.update(rec.get("modalities", ()))
    return ("embedding", *(s for s, m in FEATURE_SPACES.items() if m in have and index.count(m)))


def open_space(index: Index, name: str, seed: int = 0) -> Space:
    """Space ``name`` (one of ``SPACES``) over ``index``; an error naming the spaces it holds when it does not hold
    this one (a feature space needs its stores, found as ``Index.open_store`` finds them)."""
    if name not in SPACES:
        raise InputError(f"--space must be one of {list(SPACES)}, got {name!r}")
    held = held_spaces(index)
    if name not in held:
        raise InputError(
            f"--space {name}: the stores of the index at {index.path} hold no {FEATURE_SPACES[name]} features; "
            f"choose one of {list(held)}"
        )
    if name == "embedding":
        dim = int(index.sidecar["dim"])
        if any(index.count(m) == len(index) for m in index.embeddings):  # one modality covers every galaxy
            return Space(index, name, None, dim, seed)
        has = np.zeros(len(index), bool)
        for m in index.embeddings:
            has |= index.has(m)
        return Space(index, name, np.flatnonzero(has).astype(np.int64), dim, seed)
    modality = FEATURE_SPACES[name]
    # members are sorted (vector_ids searches them); None: every galaxy has the modality
    positions = np.asarray(index.members(modality), np.int64) if index.count(modality) < len(index) else None
    stores = index.rows["store"] if "store" in index.rows else np.zeros(len(index), np.int16)
    used = set(np.unique(stores if positions is None else stores[positions]).tolist())
    dims = set()
    for which, rec in enumerate(index.store_records()):
        if modality in rec.get("modalities", ()) and which in used:
            store = index.open_store(which)  # found and identified by fingerprint, or an error naming where
            dims.add(store.feature_arrays[f"{modality}_features"][-1])
    if len(dims) != 1:
        raise InputError(f"--space {name}: the index's stores hold {modality} features of sizes {sorted(dims)}")
    return Space(index, name, positions, int(dims.pop()), seed)
