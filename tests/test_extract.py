"""Preprocessing, encoders, checkpoint layouts and the extraction run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from galclip.config import ExtractConfig
from galclip.errors import CheckpointError, StoreError
from galclip.extract.image_encoder import ImageTrunk, load_stein_checkpoint, moco_resnet50
from galclip.extract.preprocess import centre_crop, grz_to_rgb, images_to_chw, zscore_spectra
from galclip.extract.spectrum_encoder import SpenderSpectrumEncoder, load_spender_checkpoint


def _rgb_reference(img_hwc_grz: np.ndarray, variant: str) -> np.ndarray:
    """Loop-per-band numpy transcription of the survey's sdss_rgb formula: (H, W, 3) -> (H, W, 3)."""
    scales = {"g": (2, 6.0), "r": (1, 3.4), "z": (0, 2.2)}
    m, q = 0.03, 20.0
    total = np.zeros(img_hwc_grz.shape[:2])
    for b, band in enumerate("grz"):
        total += np.maximum(0, img_hwc_grz[..., b] * scales[band][1] + m)
    intensity = total / 3
    f_i = np.arcsinh(q * intensity) / np.sqrt(q)
    intensity = intensity + (intensity == 0) * 1e-6
    rgb = np.zeros(img_hwc_grz.shape)
    for b, band in enumerate("grz"):
        plane, s = scales[band]
        x = img_hwc_grz[..., b]
        rgb[..., plane] = (x * s + m) * f_i / intensity if variant == "lupton" else x * (s + m * f_i / intensity)
    return np.clip(rgb, 0, 1)


@pytest.mark.parametrize("variant", ["lupton", "stein"])
def test_rgb_mapping_matches_reference(variant):
    rng = np.random.default_rng(0)
    img = rng.lognormal(-3, 1.5, (2, 20, 20, 3)) - 0.02  # (B, H, W, grz), some negative sky pixels
    got = grz_to_rgb(torch.tensor(img, dtype=torch.float64).permute(0, 3, 1, 2), variant).permute(0, 2, 3, 1).numpy()
    for i in range(2):
        np.testing.assert_allclose(got[i], _rgb_reference(img[i], variant), atol=1e-6)


def test_image_layout_and_crop():
    whc = np.arange(2 * 152 * 152 * 3, dtype=np.float32).reshape(2, 152, 152, 3)
    chw = images_to_chw(whc)
    assert chw.shape == (2, 3, 152, 152)
    assert chw[1, 2, 10, 40] == whc[1, 40, 10, 2]  # (W, H, C) -> (C, H, W)
    crop = centre_crop(chw, 96)
    assert crop.shape == (2, 3, 96, 96) and crop[0, 0, 0, 0] == chw[0, 0, 28, 28]


def test_zscore_spectra():
    y = torch.randn(4, 7781, dtype=torch.float64) * 5 + 3
    z = zscore_spectra(y)
    np.testing.assert_allclose(z.mean(1).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(1).numpy(), 1, atol=1e-5)


def test_spender_features_follow_eq3():
    torch.manual_seed(0)
    enc = SpenderSpectrumEncoder().eval()
    y = torch.randn(3, 7781)
    with torch.no_grad():
        x = enc.conv3(enc.pool2(enc.conv2(enc.pool1(enc.conv1(y[:, None])))))
        assert x.shape == (3, 512, 142)  # 7781 -> pool 5 -> 1557 -> pool 11 -> 142
        h, a = x[:, :256], x[:, 256:]
        ref = torch.stack([(h[i] * torch.softmax(a[i], dim=-1)).sum(-1) for i in range(3)])
        np.testing.assert_allclose(enc.features(y).numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
        assert enc(y).shape == (3, 6)


def test_stein_checkpoint_layout_round_trip(tmp_path):
    torch.manual_seed(1)
    src = moco_resnet50().eval()
    state = {f"encoder_q.{k}": v for k, v in src.state_dict().items()}
    state.update({f"encoder_k.{k}": v.clone() for k, v in src.state_dict().items()})
    state["queue"] = torch.randn(128, 16)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"state_dict": state, "epoch": 3, "hyper_parameters": {}}, tmp_path / "stein.ckpt")
    model, fc = load_stein_checkpoint(tmp_path / "stein.ckpt")
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        ref = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(
            torch.nn.Sequential(*list(src.children())[:-2])(x), 1), 1)
        np.testing.assert_allclose(ImageTrunk(model.eval())(x).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
    assert fc["0.weight"].shape == (2048, 2048) and fc["2.weight"].shape == (128, 2048)

    del state["encoder_q.layer1.0.conv1.weight"]
    state["encoder_q.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"missing \['layer1.0.conv1.weight'\].*unexpected \['extra.weight'\]"):
        load_stein_checkpoint(tmp_path / "bad.ckpt")


@pytest.mark.parametrize("n_aux", [0, 1])
def test_spender_checkpoint_layout_round_trip(tmp_path, n_aux):
    torch.manual_seed(2)
    src = SpenderSpectrumEncoder(n_latent=6, n_aux=n_aux).eval()
    state = {f"encoder.{k}": v for k, v in src.state_dict().items()}
    state["encoder.instrument.wave_obs"] = torch.linspace(3600, 9824, 7781)
    state["decoder.wave_rest"] = torch.linspace(2000, 9824, 100)
    torch.save({"model": [state], "losses": np.zeros(3)}, tmp_path / "spender.pt")
    enc = load_spender_checkpoint(tmp_path / "spender.pt").eval()
    y = torch.randn(2, 7781)
    with torch.no_grad():
        np.testing.assert_allclose(enc.features(y).numpy(), src.features(y).numpy(), rtol=1e-5, atol=1e-6)
    assert enc.mlp[0].weight.shape[1] == 256 + n_aux


def test_extraction_fills_store_and_is_idempotent(tiny_mock, tiny_store):
    from galclip.data.survey import SurveyReader
    from galclip.extract.run import run_extraction
    from galclip.store import FeatureStore

    store = FeatureStore.open(tiny_store)
    info = store.info()
    assert info.complete and info.n == 64
    data = store.load()
    assert data["image_features"].shape == (64, 2048) and data["spectrum_features"].shape == (64, 256)
    assert np.isfinite(data["image_features"]).all() and np.isfinite(data["spectrum_features"]).all()
    np.testing.assert_array_equal(data["targetid"], SurveyReader(tiny_mock).targetids())
    assert info.provenance["encoders"]["image"]["weights"]["source"] == "random"
    again = run_extraction(tiny_mock, tiny_store, ExtractConfig(batch_size=32), progress=False)
    assert again["already_complete"] and again["shards_written"] == 0
    with pytest.raises(StoreError, match="preprocessing"):
        run_extraction(tiny_mock, tiny_store, ExtractConfig(batch_size=32, rgb="stein"), progress=False)


def test_features_do_not_depend_on_batch_size(tiny_mock, tiny_store, tmp_path):
    from galclip.extract.run import run_extraction
    from galclip.store import FeatureStore

    run_extraction(tiny_mock, tmp_path / "b7.zarr", ExtractConfig(batch_size=7), progress=False)
    a, b = FeatureStore.open(tiny_store).load(), FeatureStore.open(tmp_path / "b7.zarr").load()
    np.testing.assert_allclose(a["spectrum_features"], b["spectrum_features"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["image_features"], b["image_features"], rtol=1e-4, atol=1e-4)
