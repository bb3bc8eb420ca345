"""Heads: architecture, InfoNCE against a loop implementation of eq. 1, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from galclip.config import HeadConfig
from galclip.errors import GalclipError
from galclip.heads.loss import info_nce
from galclip.heads.models import CLIPHeads
from galclip.heads.train import load_heads, train_heads
from galclip.store import FeatureStore


def _info_nce_loop(zx: np.ndarray, zy: np.ndarray, tau: float) -> float:
    """Eq. 1 term by term, both directions averaged; cosine similarity from eq. 2 with norms."""
    k = len(zx)

    def cos(a, b):
        return float(a @ b) / (math.sqrt(float(a @ a)) * math.sqrt(float(b @ b)))

    def one_way(a, b):
        total = 0.0
        for i in range(k):
            num = math.exp(cos(a[i], b[i]) / tau)
            den = sum(math.exp(cos(a[i], b[j]) / tau) for j in range(k))
            total += math.log(num / den)
        return -total / k

    return 0.5 * (one_way(zx, zy) + one_way(zy, zx))


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_info_nce_matches_loop_reference(tau):
    rng = np.random.default_rng(0)
    zx, zy = rng.normal(size=(12, 8)), rng.normal(size=(12, 8))
    got = float(info_nce(torch.tensor(zx), torch.tensor(zy), tau))
    assert got == pytest.approx(_info_nce_loop(zx, zy, tau), rel=1e-10)


def test_info_nce_rewards_alignment():
    z = torch.randn(32, 16, generator=torch.Generator().manual_seed(0))
    assert float(info_nce(z, z, 0.07)) < 0.01 < float(info_nce(z, torch.roll(z, 1, 0), 0.07))


def test_head_architectures():
    heads = CLIPHeads()
    linear = [m for m in heads.image.proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(2048, 2048), (2048, 128)]
    assert sum(p.numel() for p in heads.image.proj.parameters()) == 2048 * 2048 + 2048 + 2048 * 128 + 128  # ~4.5M
    linear = [m for m in heads.spectrum.proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(256, 256), (256, 128), (128, 128), (128, 128)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in heads.spectrum.proj) == 3
    fc = {"0.weight": torch.ones(2048, 2048), "0.bias": torch.zeros(2048), "2.weight": torch.ones(128, 2048), "2.bias": torch.zeros(128)}
    heads.load_moco_fc(fc)
    assert torch.equal(heads.image.proj[0].weight, fc["0.weight"])


def test_training_is_seeded_and_learns(tiny_store, tmp_path):
    cfg = HeadConfig(epochs=6, batch_size=16, lr=1e-3, early_stopping=None)
    a = train_heads(tiny_store, tmp_path / "a", cfg, progress=False)
    b = train_heads(tiny_store, tmp_path / "b", cfg, progress=False)
    ha = torch.load(tmp_path / "a" / "heads.pt", weights_only=False)["history"]
    hb = torch.load(tmp_path / "b" / "heads.pt", weights_only=False)["history"]
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert ha[-1]["train_loss"] < ha[0]["train_loss"]
    assert a["best_val_loss"] == min(h["val_loss"] for h in ha)
    heads, ckpt = load_heads(tmp_path / "a", FeatureStore.open(tiny_store))
    assert ckpt["config"]["batch_size"] == 16 and ckpt["n_train"] + ckpt["n_val"] == 64


def test_lr_schedule_is_reduce_on_plateau(tiny_store, tmp_path):
    cfg = HeadConfig(epochs=8, batch_size=16, lr=1e-2, lr_patience=0, early_stopping=None)
    train_heads(tiny_store, tmp_path / "h", cfg, progress=False)
    hist = torch.load(tmp_path / "h" / "heads.pt", weights_only=False)["history"]
    best = math.inf
    lr = 1e-2
    for h in hist:  # patience 0: every epoch that does not improve halves the rate
        if h["val_loss"] < best:
            best = h["val_loss"]
        else:
            lr *= 0.5
        assert h["lr"] == pytest.approx(lr)


def test_heads_refuse_another_store(tiny_store, tmp_path):
    train_heads(tiny_store, tmp_path / "h", HeadConfig(epochs=1, batch_size=16), progress=False)
    ckpt = torch.load(tmp_path / "h" / "heads.pt", weights_only=False)
    ckpt["store_fingerprint"] = "0123456789abcdef"
    torch.save(ckpt, tmp_path / "h" / "heads.pt")
    with pytest.raises(GalclipError, match="fingerprint 0123456789abcdef"):
        load_heads(tmp_path / "h", FeatureStore.open(tiny_store))
