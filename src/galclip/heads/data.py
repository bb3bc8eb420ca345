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


def split_rows(data: dict[str, np.ndarray], store_path) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train (split 0) and validation (split 1) pairs: (a,), (b,); at least 2 of each."""
    train, val = np.flatnonzero(data["split"] == 0), np.flatnonzero(data["split"] == 1)
    if len(train) < 2 or len(val) < 2:
        raise GalclipError(f"{store_path}: needs at least 2 train and 2 validation pairs "
                           f"(has {len(train)} and {len(val)})")
    return train, val


def load_features(store: FeatureStore, allow_partial: bool = False) -> dict[str, np.ndarray]:
    """Features (incl. augmented image views when stored) and metadata of the complete shards."""
    names = ["image_features", "spectrum_features"]
    if "image_features_aug" in store.feature_arrays:
        names.append("image_features_aug")
    data = store.load(allow_partial=allow_partial, features=tuple(names))
    bad = ~(np.isfinite(data["image_features"]).all(1) & np.isfinite(data["spectrum_features"]).all(1))
    if bad.any():
        raise GalclipError(
            f"{store.path}: {int(bad.sum())} rows have non-finite features, e.g. targetid "
            f"{data['targetid'][bad][:5].tolist()}; re-run extraction or check those inputs ('galclip check')"
        )
    return data


def to_device(data: dict[str, np.ndarray], rows: np.ndarray, device: torch.device, with_aug: bool) -> FeatureSet:
    """Rows of the in-memory arrays as an fp16 FeatureSet on ``device``."""
    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a[rows]), dtype=torch.float16, device=device)

    aug = t(data["image_features_aug"]) if with_aug and "image_features_aug" in data else None
    return FeatureSet(t(data["image_features"]), t(data["spectrum_features"]), aug)
