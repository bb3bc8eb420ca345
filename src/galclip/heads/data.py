"""Cached features held in memory for training: fp16 on the training device, cast per batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from galclip.errors import GalclipError
from galclip.store import FeatureStore


@dataclass
class FeatureSet:
    """One split's features on one device.

    image (n, 2048) and spectrum (n, 256) fp16; image_aug (n, K, 2048) fp16 or None.
    """

    image: torch.Tensor
    spectrum: torch.Tensor
    image_aug: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.image)

    def batch(self, idx: torch.Tensor, use_aug: torch.Tensor | None = None, view: torch.Tensor | None = None):
        """Rows ``idx`` as float32: (B, 2048), (B, 256). Where ``use_aug``, image view ``view`` replaces the clean one."""
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
    """A store's train and validation pairs, as the trainer holds them.

    train / val: fp16 FeatureSets (train with the augmented image views when asked for);
    val_rows (b,): the validation pairs' store rows; val_labels: {"redshift", "log_mstar"} (b,) each;
    stats: the train split's standardisation {"image": (mean, std), "spectrum": (mean, std)}, float64.
    """

    train: FeatureSet
    val: FeatureSet
    val_rows: np.ndarray
    val_labels: dict[str, np.ndarray]
    stats: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def n_views(self) -> int:
        return 0 if self.train.image_aug is None else int(self.train.image_aug.shape[1])

    def to(self, device: torch.device) -> "TrainingData":
        move = lambda fs: FeatureSet(*(None if t is None else t.to(device) for t in (fs.image, fs.spectrum, fs.image_aug)))  # noqa: E731
        return TrainingData(move(self.train), move(self.val), self.val_rows, self.val_labels, self.stats)


def load_training_data(store: FeatureStore, allow_partial: bool = False, with_aug: bool = True) -> TrainingData:
    """Read the store shard by shard into the trainer's arrays: fp16 train and validation features (and the
    train pairs' augmented views when ``with_aug`` and stored), and the train split's standardisation.

    Memory: the fp16 train arrays, the validation arrays, and one shard; nothing is held twice."""
    from galclip.heads.models import RunningMoments

    rows = store.require_complete(allow_partial)
    split = store.split()
    train_mask, val_mask = rows & (split == 0), rows & (split == 1)
    n_train, n_val = int(train_mask.sum()), int(val_mask.sum())
    if n_train < 2 or n_val < 2:
        raise GalclipError(f"{store.path}: needs at least 2 train and 2 validation pairs (has {n_train} and {n_val})")
    aug = with_aug and "image_features_aug" in store.feature_arrays
    names = ("targetid", "image_features", "spectrum_features", *(("image_features_aug",) if aug else ()))
    dims = {name: tuple(store.group[name].shape[1:]) for name in names}
    train = {name: np.empty((n_train, *dims[name]), np.float16) for name in names[1:]}
    val = {name: np.empty((n_val, *dims[name]), np.float16) for name in names[1:3]}
    moments = {"image": RunningMoments(dims["image_features"][0]), "spectrum": RunningMoments(dims["spectrum_features"][0])}
    at_train = at_val = 0
    for lo, keep, block in store.iter_shards(names, rows):
        image, spectrum = block["image_features"], block["spectrum_features"]
        bad = ~(np.isfinite(image).all(1) & np.isfinite(spectrum).all(1))
        if bad.any():
            raise GalclipError(
                f"{store.path}: {int(bad.sum())} rows have non-finite features, e.g. targetid "
                f"{block['targetid'][bad][:5].tolist()}; re-run extraction or check those inputs ('galclip check')"
            )
        is_train = split[lo:lo + len(keep)][keep] == 0
        t, v = int(is_train.sum()), int((~is_train).sum())
        for name in names[1:]:
            train[name][at_train:at_train + t] = block[name][is_train]
        moments["image"].update(image[is_train])
        moments["spectrum"].update(spectrum[is_train])
        val["image_features"][at_val:at_val + v] = image[~is_train]
        val["spectrum_features"][at_val:at_val + v] = spectrum[~is_train]
        at_train, at_val = at_train + t, at_val + v
    fp16 = torch.from_numpy  # already fp16: no copy
    val_set = FeatureSet(fp16(val["image_features"]), fp16(val["spectrum_features"]), None)
    val_rows = np.flatnonzero(val_mask)
    labels = {"redshift": store.read_meta("label_redshift")[val_rows], "log_mstar": store.read_meta("label_log_mstar")[val_rows]}
    return TrainingData(FeatureSet(fp16(train["image_features"]), fp16(train["spectrum_features"]),
                                   fp16(train["image_features_aug"]) if aug else None),
                        val_set, val_rows, labels,
                        {name: m.standardisation() for name, m in moments.items()})
