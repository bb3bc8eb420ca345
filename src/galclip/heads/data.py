"""Cached features held in memory for training: standardised in float32, then held in fp16 on the training
device and cast back per batch, so training sees what evaluation and indexing see to fp16 precision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from galclip.errors import GalclipError
from galclip.split import SELECTION, TEST, TRAIN
from galclip.store import FeatureStore


@dataclass
class FeatureSet:
    """One split's features on one device, standardised with the train split's statistics (when the heads
    standardise) before the cast to fp16.

    image (n, 2048) and spectrum (n, 256) fp16; image_aug (n, K, 2048) fp16 or None.
    """

    image: torch.Tensor
    spectrum: torch.Tensor
    image_aug: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.image)

    def batch(self, idx: torch.Tensor, use_aug: torch.Tensor | None = None, view: torch.Tensor | None = None):
        """Rows ``idx`` as float32: (B, 2048), (B, 256). Where ``use_aug``, image view ``view`` replaces the clean
        one."""
        xi = self.image[idx]
        if use_aug is not None and self.image_aug is not None:
            xi = torch.where(use_aug[:, None], self.image_aug[idx, view], xi)
        return xi.float(), self.spectrum[idx].float()


def sample_views(gen: torch.Generator, n: int, n_views: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair of a batch: a uniform (n,) to compare with each configuration's aug_prob, and a view index (n,)."""
    u = torch.rand(n, generator=gen)
    view = torch.randint(n_views, (n,), generator=gen)
    return u.to(device), view.to(device)


@dataclass
class TrainingData:
    """A store's train and selection pairs, as the trainer holds them, and where its test pairs are.

    train / selection: fp16 FeatureSets of the train and the selection split (which drives the schedule, early
    stopping and the best epoch; the files name its loss "val_loss", as galclip 0.1 did), train with the augmented
    image views when asked for;
    standardised: whether they hold standardised features (then the heads' own standardisation is skipped in
    training); test_rows (b,): the test pairs' store rows; test_labels: {"redshift", "log_mstar"} (b,) each;
    stats: the train split's standardisation {"image": (mean, std), "spectrum": (mean, std)}, float64.
    """

    train: FeatureSet
    selection: FeatureSet
    test_rows: np.ndarray
    test_labels: dict[str, np.ndarray]
    stats: dict[str, tuple[np.ndarray, np.ndarray]]
    standardised: bool = False

    @property
    def n_views(self) -> int:
        return 0 if self.train.image_aug is None else int(self.train.image_aug.shape[1])

    def to(self, device: torch.device) -> TrainingData:
        move = lambda fs: FeatureSet(
            *(None if t is None else t.to(device) for t in (fs.image, fs.spectrum, fs.image_aug))
        )
        return TrainingData(
            move(self.train), move(self.selection), self.test_rows, self.test_labels, self.stats, self.standardised
        )


FP16_MAX = float(np.finfo(np.float16).max)


def to_fp16(x: np.ndarray, stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Rows (b, ..., D) -> fp16: standardised in float32 with ``stats`` (mean, std) (D,) first when given (the
    float32 arithmetic ``Standardise`` does at evaluation), clipped to fp16's finite range."""
    x = np.asarray(x, np.float32)
    if stats is not None:
        mean, std = (np.asarray(a, np.float32) for a in stats)
        x = (x - mean) / std
    return np.clip(x, -FP16_MAX, FP16_MAX).astype(np.float16)


def load_training_data(
    store: FeatureStore, allow_partial: bool = False, with_aug: bool = True, standardise: bool = True
) -> TrainingData:
    """Read the store shard by shard into the trainer's arrays: train and selection features (and the train
    pairs' augmented views when ``with_aug`` and stored), standardised in float32 with the train split's
    statistics when ``standardise``, then held in fp16.

    Two passes: the first gathers the train split's statistics, the second fills the arrays. Memory: the fp16
    train and selection arrays and one shard; nothing is held twice."""
    from galclip.heads.models import RunningMoments

    rows = store.require_complete(allow_partial)
    split = store.split()
    train_mask, selection_mask, test_mask = rows & (split == TRAIN), rows & (split == SELECTION), rows & (split == TEST)
    n_train, n_selection = int(train_mask.sum()), int(selection_mask.sum())
    if n_train < 2 or n_selection < 2:
        raise GalclipError(
            f"{store.path}: needs at least 2 train and 2 selection pairs (has {n_train} and {n_selection})"
        )
    aug = with_aug and "image_features_aug" in store.feature_arrays
    names = ("targetid", "image_features", "spectrum_features", *(("image_features_aug",) if aug else ()))
    dims = {name: tuple(store.group[name].shape[1:]) for name in names}
    moments = {
        "image": RunningMoments(dims["image_features"][0]),
        "spectrum": RunningMoments(dims["spectrum_features"][0]),
    }
    for lo, keep, block in store.iter_shards(names[:3], rows):
        image, spectrum = block["image_features"], block["spectrum_features"]
        bad = ~(np.isfinite(image).all(1) & np.isfinite(spectrum).all(1))
        if bad.any():
            raise GalclipError(
                f"{store.path}: {int(bad.sum())} rows have non-finite features, e.g. targetid "
                f"{block['targetid'][bad][:5].tolist()}; re-run extraction or check those inputs ('galclip check')"
            )
        is_train = split[lo : lo + len(keep)][keep] == TRAIN
        moments["image"].update(image[is_train])
        moments["spectrum"].update(spectrum[is_train])
    stats = {name: m.standardisation() for name, m in moments.items()}
    norm = {
        "image_features": stats["image"] if standardise else None,
        "image_features_aug": stats["image"] if standardise else None,
        "spectrum_features": stats["spectrum"] if standardise else None,
    }
    train = {name: np.empty((n_train, *dims[name]), np.float16) for name in names[1:]}
    selection = {name: np.empty((n_selection, *dims[name]), np.float16) for name in names[1:3]}
    at_train = at_selection = 0
    for lo, keep, block in store.iter_shards(names, train_mask | selection_mask):
        is_train = split[lo : lo + len(keep)][keep] == TRAIN
        t, v = int(is_train.sum()), int((~is_train).sum())
        for name in names[1:]:
            train[name][at_train : at_train + t] = to_fp16(block[name][is_train], norm[name])
        for name in names[1:3]:
            selection[name][at_selection : at_selection + v] = to_fp16(block[name][~is_train], norm[name])
        at_train, at_selection = at_train + t, at_selection + v
    fp16 = torch.from_numpy  # already fp16: no copy
    test_rows = np.flatnonzero(test_mask)
    labels = {
        "redshift": store.read_meta("label_redshift")[test_rows],
        "log_mstar": store.read_meta("label_log_mstar")[test_rows],
    }
    return TrainingData(
        FeatureSet(
            fp16(train["image_features"]),
            fp16(train["spectrum_features"]),
            fp16(train["image_features_aug"]) if aug else None,
        ),
        FeatureSet(fp16(selection["image_features"]), fp16(selection["spectrum_features"]), None),
        test_rows,
        labels,
        stats,
        standardised=standardise,
    )
