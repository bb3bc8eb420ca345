"""Stage one for real: official checkpoints, augmented variants, kill -9 and resume, torchrun."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from galclip.config import ExtractConfig
from galclip.extract.augment import augment_images, augment_spectra
from galclip.extract.spectrum_encoder import load_spender_checkpoint
from galclip.store import FeatureStore

from conftest import SHARDED_EXTRACT_ARGS as EXTRACT_ARGS


def _arrays(path: Path) -> dict[str, np.ndarray]:
    store = FeatureStore.open(path)
    return store.load(features=tuple(store.feature_arrays))


def _assert_same_store(a: Path, b: Path) -> None:
    xa, xb = _arrays(a), _arrays(b)
    assert xa.keys() == xb.keys()
    for name in xa:
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)


def test_official_spender_package_checkpoint_loads(tmp_path):
    import spender

    torch.manual_seed(0)
    wave = torch.linspace(3600, 9824, 7781)
    model = spender.SpectrumAutoencoder(spender.Instrument(wave), torch.linspace(2000, 9824, 2000), n_latent=6).eval()
    torch.save({"model": [model.state_dict()], "losses": np.zeros((2, 3))}, tmp_path / "spender.desi-edr.test.pt")
    ours = load_spender_checkpoint(tmp_path / "spender.desi-edr.test.pt").eval()
    y = torch.randn(4, 7781)
    with torch.no_grad():
        h, a = model.encoder._downsample(y)
        reference = torch.sum(h * model.encoder.softmax(a), dim=2)  # spender's own attention path
        np.testing.assert_allclose(ours.features(y).numpy(), reference.numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(ours(y).numpy(), model.encoder(y).numpy(), atol=1e-5, rtol=1e-5)


def test_augmented_views_are_deterministic_per_targetid():
    rng = np.random.default_rng(0)
    images = torch.as_tensor(rng.lognormal(-3, 1, (4, 3, 152, 152)), dtype=torch.float32)
    ids = np.array([11, 12, 13, 14])
    a = augment_images(images, ids, 0, 96)
    assert a.shape == (4, 3, 96, 96)
    torch.testing.assert_close(augment_images(images, ids, 0, 96), a, rtol=0, atol=0)
    # a view depends on its own galaxy only, not on the batch it is in
    torch.testing.assert_close(augment_images(images[2:3], ids[2:3], 0, 96), a[2:3], rtol=0, atol=1e-6)
    assert (augment_images(images, ids, 1, 96) - a).abs().mean() > 1e-3
    spectra = torch.randn(4, 7781)
    torch.testing.assert_close(augment_spectra(spectra, ids, 0), augment_spectra(spectra, ids, 0), rtol=0, atol=0)


def test_variant_arrays_in_store(sharded_store):
    store = FeatureStore.open(sharded_store)
    assert store.feature_arrays["image_features_aug"] == (1, 2048) and store.n_shards == 4
    data = store.load(features=("image_features", "image_features_aug"))
    assert np.isfinite(data["image_features_aug"]).all()
    assert not np.allclose(data["image_features_aug"][:, 0], data["image_features"])


def test_kill_minus_9_then_resume_is_bitwise_identical(tiny_mock, sharded_store, tmp_path):
    """kill -9 five times in a row — at seeded random moments and right after a shard lands — then finish."""
    store = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "galclip", "-q", "extract", str(tiny_mock), str(store), *EXTRACT_ARGS]
    rng = np.random.default_rng(7)

    def n_complete() -> int:
        return int(FeatureStore.open(store).complete_mask().sum()) if (store / "zarr.json").exists() else 0

    kills = 0
    for attempt in range(5):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before, deadline = n_complete(), time.time() + 120
        at = time.time() + rng.uniform(1.0, 6.0) if attempt % 2 == 0 else None  # random moment, or after a shard
        while proc.poll() is None and time.time() < deadline:
            if (at is not None and time.time() >= at) or (at is None and n_complete() > before):
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.05)
        proc.wait()
        if proc.returncode == 0:
            break
    assert kills >= 3
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_store(store, sharded_store)
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_torchrun_two_ranks_match_one(tiny_mock, sharded_store, tmp_path):
    """Two writer processes (gloo ranks) on disjoint whole shards of one store == one writer, bit for bit."""
    store = tmp_path / "ranks.zarr"
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))  # same kernels as the reference
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "galclip", "-q", "extract", str(tiny_mock), str(store), *EXTRACT_ARGS]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0/2" in done.stdout and "rank 1/2" in done.stdout
    _assert_same_store(store, sharded_store)
    assert FeatureStore.open(store).info().complete


def test_stein_weights_select_stein_rgb_and_seed_the_image_head(tiny_mock, tmp_path):
    from galclip.config import HeadConfig
    from galclip.extract.image_encoder import moco_resnet50
    from galclip.extract.run import run_extraction
    from galclip.heads.train import train_heads
    from galclip.provenance import sha256_file

    torch.manual_seed(4)
    src = moco_resnet50()
    torch.save({"state_dict": {f"encoder_q.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "stein.ckpt")
    run_extraction(tiny_mock, tmp_path / "s.zarr", ExtractConfig(image_weights=str(tmp_path / "stein.ckpt"), batch_size=32),
                   progress=False)
    store = FeatureStore.open(tmp_path / "s.zarr")
    assert store.provenance["preprocessing"]["image"]["rgb"] == "stein"
    assert store.provenance["encoders"]["image"]["weights"]["sha256"] == sha256_file(tmp_path / "stein.ckpt")
    np.testing.assert_array_equal(store.moco_fc()["0.weight"], src.fc[0].weight.detach().numpy())
    summary = train_heads(tmp_path / "s.zarr", tmp_path / "heads", HeadConfig(epochs=1, batch_size=16), progress=False)
    assert summary["image_head_init"] == "moco_fc"


def test_second_extraction_refuses_while_first_holds_the_lock(tiny_mock, tmp_path):
    from galclip.errors import StoreError
    from galclip.extract.run import run_extraction

    store = tmp_path / "locked.zarr"
    code = ("import sys, time; from galclip.store.lock import StoreLock; lock = StoreLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreError, match=f"pid {holder.pid}"):
            run_extraction(tiny_mock, store, ExtractConfig(batch_size=32), progress=False)
        assert not store.exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops the lock with the process
        holder.wait()
    run_extraction(tiny_mock, store, ExtractConfig(batch_size=32), progress=False)
    assert FeatureStore.open(store).info().complete


def test_torchrun_rank0_error_stops_every_rank(tiny_mock, tmp_path):
    """Rank 0 meets a bad catalogue, then a lock held by another extraction: every rank exits non-zero at
    once with rank 0's reason, none waits at a barrier until the distributed timeout."""
    from galclip.store.lock import StoreLock

    (tmp_path / "cat.h5").write_bytes(b"not a catalogue")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "galclip",
            "-q", "extract", str(tiny_mock / "survey.h5"), *EXTRACT_ARGS]
    done = subprocess.run([*base, str(tmp_path / "a.zarr"), "--catalogue", str(tmp_path / "cat.h5")],
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode != 0
    assert "cat.h5: not a readable HDF5 catalogue" in done.stdout + done.stderr
    assert "rank 0 stopped the job" in done.stdout + done.stderr  # what rank 1 says
    assert not (tmp_path / "a.zarr").exists()
    with StoreLock(tmp_path / "b.zarr"):  # this test process is "another extraction" of b.zarr
        done = subprocess.run([*base, str(tmp_path / "b.zarr")], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode != 0
    assert f"pid {os.getpid()}" in done.stdout + done.stderr and "rank 0 stopped the job" in done.stdout + done.stderr
    assert not (tmp_path / "b.zarr").exists()
