"""The encoder backends: fused features within tolerance of eager, eager unchanged, and stores that never mix them."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner

from galclip.extract.backends import (
    FEATURE_TOLERANCE,
    FusedSpender,
    image_forward,
    resolve_backend,
    spectrum_forward,
)
from galclip.extract.image_encoder import build_image_encoder
from galclip.extract.spectrum_encoder import build_spectrum_encoder
from galclip.store import FeatureStore
from galclip.store.feature_store import StoreError, _with_backend, leaf_diff, recorded_backend


def _relative_difference(fused: torch.Tensor, eager: torch.Tensor) -> float:
    return float((fused - eager).abs().max() / eager.abs().max())


@torch.inference_mode()
def test_fused_image_features_match_eager_for_any_batch_size():
    trunk, _ = build_image_encoder(None, 0)
    fused = image_forward(trunk, "fused", 64)  # traced at batch 1
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last)
    assert _relative_difference(fused(x), trunk(x)) < FEATURE_TOLERANCE
    assert image_forward(trunk, "eager", 64) is trunk  # eager is the module itself: today's features bit for bit


@pytest.mark.parametrize("negative_slopes", [False, True])
@torch.inference_mode()
def test_fused_spectrum_features_match_eager(negative_slopes):
    """Odd batch sizes (blocks of 4 and a remainder), masked-looking flat stretches, and V-shaped PReLUs."""
    from galclip.data.preprocess import zscore_spectra

    encoder = build_spectrum_encoder(None, 0)
    if negative_slopes:  # real checkpoints may learn slopes < 0: the pooled minimum then matters
        g = torch.Generator().manual_seed(2)
        for block in (encoder.conv1, encoder.conv2, encoder.conv3):
            block[2].weight.copy_(torch.rand(block[2].weight.shape, generator=g) - 0.6)
    spectra = torch.randn(6, 7781, generator=torch.Generator().manual_seed(3)) + 3
    spectra[2, 1000:3000] = 3.0  # a flat stretch: zero variance inside windows
    y = zscore_spectra(spectra)
    eager = encoder.features(y)
    assert _relative_difference(FusedSpender(encoder)(y), eager) < FEATURE_TOLERANCE
    assert _relative_difference(FusedSpender(encoder)(y[:1]), eager[:1]) < FEATURE_TOLERANCE
    assert FusedSpender(encoder)(y[:0]).shape == encoder.features(y[:0]).shape == (0, 256)  # as eager
    assert spectrum_forward(encoder, "eager") == encoder.features


def test_backend_resolution():
    assert resolve_backend(None, "cpu") == "fused"
    assert resolve_backend("eager", "cpu") == "eager"
    assert resolve_backend("fused", "cuda") == "eager"  # GPUs run eager with bf16 autocast
    assert resolve_backend(None, "cpu", compile_=True) == "eager"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("onnx", "cpu")


def test_store_records_its_backend_and_older_stores_read_as_eager(tiny_store):
    prov = FeatureStore.open(tiny_store).provenance
    assert recorded_backend(prov) == "fused"
    older = {**prov, "preprocessing": {**prov["preprocessing"], "compute": {"device_type": "cpu"}}}
    assert recorded_backend(older) == "eager"


def test_resume_refuses_another_backend_and_names_the_fix(tiny_mock, tiny_store, tmp_path):
    from galclip.cli import main

    store = tmp_path / "features.zarr"
    shutil.copytree(tiny_store, store)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["extract", str(tiny_mock), str(store), "--backend", "eager", "--no-progress"])
    assert result.exit_code == 1, result.output  # a StoreError, like every refused resume
    assert 'preprocessing.compute.backend: store has "fused", this run has "eager"' in result.output
    resume = result.output.split("run exactly:")[1].splitlines()[1].strip()
    assert resume.startswith("galclip extract") and "--backend" not in resume  # the store's own backend
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before  # nothing touched
    recorded = FeatureStore.open(store).provenance
    eager = {**recorded, "preprocessing": {**recorded["preprocessing"], "compute": {"device_type": "cpu"}}}
    eager["preprocessing"]["compute"]["backend"] = "eager"
    with pytest.raises(StoreError, match='backend: store has "fused"'):
        FeatureStore.open(store).check_compatible(eager)
    unrecorded = {**eager, "preprocessing": {**eager["preprocessing"], "compute": {"device_type": "cpu"}}}
    assert leaf_diff(_with_backend(unrecorded), _with_backend(eager)) == []  # an older store resumes eager
